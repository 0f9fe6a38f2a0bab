// The coordinator over TLS 1.3: certificates made here with OpenSSL's API (self-signed,
// for 127.0.0.1), a round through the service, and the refusals: a client trusting
// another certificate, a plain-TCP client. Loopback only; bounded by the clients' timeouts.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "coordinator/service.h"
#include "coordinator_test_util.h"
#include "skyring/coordinator.h"
#include "skyring/error.h"

namespace skyring::coordinator {
namespace {

using namespace std::chrono_literals;

constexpr std::size_t kN = 5000;

// Writes dir/<name>.pem (certificate) and dir/<name>.key: self-signed, P-256, for
// 127.0.0.1 and localhost, valid for an hour.
void makeCertificate(const std::filesystem::path& dir, const std::string& name) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  ASSERT_NE(key, nullptr);
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, key);
  X509_NAME* subject = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(name.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, subject);
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, x, x, nullptr, nullptr, 0);
  for (auto [nid, value] : {std::pair{NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost"},
                            std::pair{NID_basic_constraints, "critical,CA:TRUE"}}) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
    ASSERT_NE(ext, nullptr);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  ASSERT_GT(X509_sign(x, key, EVP_sha256()), 0);
  FILE* f = std::fopen((dir / (name + ".pem")).c_str(), "w");
  PEM_write_X509(f, x);
  std::fclose(f);
  f = std::fopen((dir / (name + ".key")).c_str(), "w");
  PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
  X509_free(x);
  EVP_PKEY_free(key);
}

class CoordinatorTls : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("skyring-coord-tls-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    makeCertificate(dir_, "server");
    makeCertificate(dir_, "stranger");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  ServiceOptions serviceOptions() const {
    ServiceOptions o;
    o.token = "tls-token";
    o.aggregator = test::options3(3);
    o.initialWeights = test::seeded(kN, 3);
    o.idleTimeout = 2s;
    o.tlsCertificate = (dir_ / "server.pem").string();
    o.tlsKey = (dir_ / "server.key").string();
    return o;
  }
  ClientOptions clientOptions(const Service& s, const std::string& cluster,
                              const std::string& ca = "server") const {
    ClientOptions o;
    o.port = s.port();
    o.cluster = cluster;
    o.token = "tls-token";
    o.tls = true;
    o.tlsCaFile = (dir_ / (ca + ".pem")).string();
    o.connectTimeout = 2s;
    o.connectAttempts = 1;
    o.ioTimeout = 5s;
    o.roundTimeout = 5s;
    o.chunkElements = 1000;
    return o;
  }
  std::filesystem::path dir_;
};

TEST_F(CoordinatorTls, ARoundOverTls13) {
  Service service(serviceOptions());
  service.start();
  std::vector<std::pair<std::string, std::vector<float>>> subs;
  for (const char* name : {"aws", "azure", "gcp"}) {
    subs.emplace_back(name, test::seeded(kN, 70 + subs.size(), 0.1f));
    Client c(clientOptions(service, name));
    EXPECT_EQ(c.submit(0, subs.back().second, 5, "bf16"), SubmitOutcome::counted);
  }
  Client c(clientOptions(service, "gcp"));
  std::vector<float> w(kN);
  ASSERT_EQ(c.fetch(0, w), 0u);
  Aggregator agg(serviceOptions().aggregator, test::freshState(test::seeded(kN, 3)), Clock::now());
  for (const auto& [name, delta] : subs)
    test::submit(agg, name, 0, delta, 5, Clock::now(), 1000, "bf16");
  EXPECT_EQ(w, agg.state().weights);
}

TEST_F(CoordinatorTls, AnUntrustedCertificateOrPlainTcpIsRefused) {
  Service service(serviceOptions());
  service.start();
  try {
    Client c(clientOptions(service, "aws", "stranger"));
    FAIL() << "a certificate the client does not trust was accepted";
  } catch (const TransportError& e) {
    EXPECT_NE(e.detail().find("certificate"), std::string::npos) << e.detail();
  }
  auto plain = clientOptions(service, "aws");
  plain.tls = false;
  plain.ioTimeout = 500ms;
  EXPECT_THROW(Client c(plain), Error);
  // The service still serves a good client.
  Client c(clientOptions(service, "aws"));
  EXPECT_EQ(c.status(0).state, RoundInfo::State::open);
}

}  // namespace
}  // namespace skyring::coordinator
