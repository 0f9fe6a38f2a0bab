// skyring::coordinator::Client over blocking-free POSIX sockets: every send and receive
// waits in poll(2) with the remaining time, so no call outlives its timeout.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "coordinator/auth.h"
#include "coordinator/wire.h"
#include "skyring/compression.h"
#include "skyring/coordinator.h"
#include "skyring/error.h"

namespace skyring::coordinator {

namespace {

using Ms = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

ErrorContext ctx(const std::string& op) {
  return ErrorContext{-1, -1, "coordinator client " + op};
}

wire::SubmitCodec codecId(std::string_view codec) {
  if (codec == "none") return wire::SubmitCodec::none;
  if (codec == "fp16") return wire::SubmitCodec::fp16;
  if (codec == "bf16") return wire::SubmitCodec::bf16;
  if (codec == "int8") return wire::SubmitCodec::int8;
  SKYRING_THROW(InvalidArgument, ctx("submit"), "codec '", codec,
                "' is not one the coordinator takes (none, fp16, bf16, int8)");
}

int remainingMs(SteadyClock::time_point until) {
  const auto left = std::chrono::duration_cast<Ms>(until - SteadyClock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, 1 << 30));
}

std::string sslErrors() {
  std::string out;
  char line[256];
  while (const unsigned long e = ERR_get_error()) {
    ERR_error_string_n(e, line, sizeof(line));
    out += out.empty() ? "" : "; ";
    out += line;
  }
  return out.empty() ? std::string("no detail from OpenSSL") : out;
}

bool isIpAddress(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return ::inet_pton(AF_INET, host.c_str(), buf) == 1 ||
         ::inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

}  // namespace

std::string_view submitOutcomeName(SubmitOutcome o) noexcept {
  switch (o) {
    case SubmitOutcome::counted:
      return "counted";
    case SubmitOutcome::duplicate:
      return "duplicate";
    case SubmitOutcome::carried:
      return "carried";
    case SubmitOutcome::late:
      return "late";
  }
  return "?";
}

struct Client::Impl {
  ClientOptions options;
  int fd = -1;
  SSL_CTX* tlsContext = nullptr;  // made at the first TLS connect
  SSL* ssl = nullptr;             // the connection's TLS session; null: plain
  std::uint64_t round = 0, count = 0;
  wire::FrameDecoder decoder;

  ~Impl() {
    disconnect();
    if (tlsContext) SSL_CTX_free(tlsContext);
  }
  void disconnect() noexcept {
    if (ssl) SSL_free(ssl);
    ssl = nullptr;
    if (fd >= 0) ::close(fd);
    fd = -1;
    decoder = wire::FrameDecoder();
  }

  // One attempt to move bytes: > 0 moved, 0 the peer closed, -1 it would block (waitFor
  // says for what). Errors throw TransportError.
  ssize_t transfer(bool writing, void* data, std::size_t n, short& waitFor, const char* op) {
    if (!ssl) {
      const ssize_t r = writing ? ::send(fd, data, n, MSG_NOSIGNAL | MSG_DONTWAIT)
                                : ::recv(fd, data, n, MSG_DONTWAIT);
      if (r >= 0) return r;
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        waitFor = writing ? POLLOUT : POLLIN;
        return -1;
      }
      if (!writing && errno == ECONNRESET) return 0;
      SKYRING_THROW(TransportError, ctx(op),
                    "connection to the coordinator lost: ", std::strerror(errno));
    }
    ERR_clear_error();
    const int len = static_cast<int>(std::min<std::size_t>(n, 1 << 30));
    const int r = writing ? SSL_write(ssl, data, len) : SSL_read(ssl, data, len);
    if (r > 0) return r;
    switch (SSL_get_error(ssl, r)) {
      case SSL_ERROR_WANT_READ:
        waitFor = POLLIN;
        return -1;
      case SSL_ERROR_WANT_WRITE:
        waitFor = POLLOUT;
        return -1;
      case SSL_ERROR_ZERO_RETURN:
        return 0;
      case SSL_ERROR_SYSCALL:
        if (!writing) return 0;
        SKYRING_THROW(TransportError, ctx(op),
                      "connection to the coordinator lost: ", std::strerror(errno));
      default:
        SKYRING_THROW(TransportError, ctx(op), "TLS error: ", sslErrors());
    }
  }

  void wait(short waitFor, SteadyClock::time_point until, const char* op) {
    pollfd p{fd, waitFor, 0};
    if (::poll(&p, 1, remainingMs(until)) == 0) {
      SKYRING_THROW(Timeout, ctx(op), "no progress with the coordinator at ", options.host, ":",
                    options.port, " in time");
    }
  }

  void startTls(SteadyClock::time_point until) {
    if (!tlsContext) {
      tlsContext = SSL_CTX_new(TLS_client_method());
      if (!tlsContext) SKYRING_THROW(TransportError, ctx("connect"), "TLS: ", sslErrors());
      SSL_CTX_set_min_proto_version(tlsContext, TLS1_3_VERSION);
      SSL_CTX_set_options(tlsContext, SSL_OP_IGNORE_UNEXPECTED_EOF);
      SSL_CTX_set_verify(tlsContext, SSL_VERIFY_PEER, nullptr);
      const bool loaded =
          options.tlsCaFile.empty()
              ? SSL_CTX_set_default_verify_paths(tlsContext) == 1
              : SSL_CTX_load_verify_locations(tlsContext, options.tlsCaFile.c_str(), nullptr) == 1;
      if (!loaded) {
        const std::string why = sslErrors();
        SSL_CTX_free(tlsContext);
        tlsContext = nullptr;
        SKYRING_THROW(InvalidArgument, ctx("connect"), "cannot load the TLS CA certificates '",
                      options.tlsCaFile, "': ", why);
      }
    }
    ssl = SSL_new(tlsContext);
    if (!ssl || SSL_set_fd(ssl, fd) != 1)
      SKYRING_THROW(TransportError, ctx("connect"), "TLS: ", sslErrors());
    const std::string& name = options.tlsServerName.empty() ? options.host : options.tlsServerName;
    if (isIpAddress(name)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl, name.c_str());
      SSL_set1_host(ssl, name.c_str());
    }
    for (;;) {
      ERR_clear_error();
      const int r = SSL_connect(ssl);
      if (r == 1) return;
      const int e = SSL_get_error(ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        wait(e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, until, "connect");
        continue;
      }
      const long verify = SSL_get_verify_result(ssl);
      SKYRING_THROW(TransportError, ctx("connect"), "TLS handshake with ", options.host, ":",
                    options.port, " failed",
                    verify != X509_V_OK ? std::string(" (certificate: ") +
                                              X509_verify_cert_error_string(verify) + ")"
                                        : std::string(),
                    ": ", sslErrors());
    }
  }

  // Runs op on a live connection; a failure closes it so that the next call reconnects.
  template <typename F>
  auto guarded(F&& op) {
    try {
      if (fd < 0 || closedByPeer()) connect();
      return op();
    } catch (...) {
      disconnect();
      throw;
    }
  }

  // The service closes connections idle for its idle timeout (between rounds, say): found
  // out before a call rather than by its failure. Anything readable now is unasked for.
  bool closedByPeer() noexcept {
    char b;
    if (!ssl) {
      const ssize_t r = ::recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
      return !(r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    }
    ERR_clear_error();  // TLS 1.3 session tickets arrive after the handshake: not data
    const int r = SSL_peek(ssl, &b, 1);
    if (r > 0) return true;
    const int e = SSL_get_error(ssl, r);
    ERR_clear_error();
    return !(e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE);
  }

  int connectOnce(SteadyClock::time_point until) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const std::string port = std::to_string(options.port);
    if (const int rc = ::getaddrinfo(options.host.c_str(), port.c_str(), &hints, &found)) {
      SKYRING_THROW(TransportError, ctx("connect"), "cannot resolve '", options.host,
                    "': ", ::gai_strerror(rc));
    }
    std::string last = "no address";
    for (addrinfo* a = found; a; a = a->ai_next) {
      const int s = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (s < 0) continue;
      int rc = ::connect(s, a->ai_addr, a->ai_addrlen);
      if (rc < 0 && errno == EINPROGRESS) {
        pollfd p{s, POLLOUT, 0};
        rc = ::poll(&p, 1, remainingMs(until));
        int err = 0;
        socklen_t len = sizeof(err);
        if (rc == 1 && ::getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
          rc = 0;
        } else {
          last = rc == 0 ? std::string("timed out") : std::strerror(err ? err : errno);
          rc = -1;
        }
      } else if (rc < 0) {
        last = std::strerror(errno);
      }
      if (rc == 0) {
        ::freeaddrinfo(found);
        const int one = 1;
        ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        return s;
      }
      ::close(s);
    }
    ::freeaddrinfo(found);
    SKYRING_THROW(TransportError, ctx("connect"), "cannot connect to ", options.host, ":",
                  options.port, ": ", last);
  }

  void connect() {
    disconnect();
    Ms pause(100);
    for (int attempt = 1;; ++attempt) {
      try {
        const auto until = SteadyClock::now() + options.connectTimeout;
        fd = connectOnce(until);
        if (options.tls) startTls(until);
        handshake();
        return;
      } catch (const TransportError& e) {
        disconnect();
        // A refusal with a reason (wrong token, unknown cluster) will not change: no retry.
        if (attempt >= options.connectAttempts ||
            e.detail().find("refused by the coordinator") != std::string::npos ||
            e.detail().find("(certificate: ") != std::string::npos)
          throw;
      } catch (const Timeout&) {
        disconnect();
        if (attempt >= options.connectAttempts) throw;
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, Ms(2000));
    }
  }

  void handshake() {
    const auto challenge = wire::parseChallenge(receive(deadline(options.ioTimeout), "hello"));
    const auto key = auth::deriveKey(options.token);
    wire::Hello h;
    h.cluster = options.cluster;
    h.clientNonce = auth::randomNonce();
    h.proof = auth::clientProof(key, challenge.serverNonce, h.clientNonce, h.cluster);
    send(wire::encode(h));
    const auto w = wire::parseWelcome(receive(deadline(options.ioTimeout), "hello"));
    if (!auth::sameMac(w.proof,
                       auth::serverProof(key, challenge.serverNonce, h.clientNonce, h.cluster))) {
      SKYRING_THROW(TransportError, ctx("hello"), "the coordinator at ", options.host, ":",
                    options.port, " does not know the job token (its proof is wrong)");
    }
    round = w.round;
    count = w.count;
  }

  static SteadyClock::time_point deadline(Ms d) { return SteadyClock::now() + d; }

  void send(const std::vector<std::byte>& bytes) {
    const auto until = deadline(options.ioTimeout);
    std::size_t at = 0;
    while (at < bytes.size()) {
      short waitFor = 0;
      ssize_t n = 0;
      try {
        n = transfer(true, const_cast<std::byte*>(bytes.data()) + at, bytes.size() - at, waitFor,
                     "send");
      } catch (const TransportError& e) {
        // The service may have said why before it closed (a refused chunk, say).
        SKYRING_THROW(TransportError, ctx("send"), e.detail(), serverError(deadline(Ms(200))));
      }
      if (n > 0) {
        at += static_cast<std::size_t>(n);
      } else {
        wait(waitFor, until, "send");
      }
    }
  }

  // The error frame the service may have sent before closing (its reason), if any.
  std::string serverError(SteadyClock::time_point until) {
    try {
      receive(until, "send");
    } catch (const TransportError& e) {
      if (e.detail().find("refused by the coordinator") != std::string::npos)
        return " (" + e.detail() + ")";
    } catch (const Error&) {
    }
    return "";
  }

  // The next frame; an error frame becomes a TransportError with the service's reason.
  wire::Frame receive(SteadyClock::time_point until, const char* op) {
    wire::Frame f;
    std::byte buf[64 * 1024];
    while (!decoder.next(f)) {
      short waitFor = 0;
      const ssize_t n = transfer(false, buf, sizeof(buf), waitFor, op);
      if (n == 0) {
        SKYRING_THROW(TransportError, ctx(op), "the coordinator closed the connection");
      }
      if (n < 0) {
        wait(waitFor, until, op);
        continue;
      }
      decoder.feed(std::span(buf, static_cast<std::size_t>(n)));
    }
    if (f.type == wire::FrameType::error) {
      const auto e = wire::parseError(f);
      SKYRING_THROW(TransportError, ctx(op), "refused by the coordinator (code ",
                    static_cast<int>(e.code), "): ", e.reason);
    }
    return f;
  }

  SubmitOutcome outcome(const wire::Frame& f) {
    if (f.type == wire::FrameType::late) {
      return wire::parseLate(f).disposition == wire::LateDisposition::carried
                 ? SubmitOutcome::carried
                 : SubmitOutcome::late;
    }
    const auto s = wire::parseRoundStatus(f);
    return s.counted ? SubmitOutcome::duplicate : SubmitOutcome::counted;
  }

  SubmitOutcome submit(std::uint64_t r, std::span<const float> delta, std::uint64_t samples,
                       std::string_view codecName) {
    const auto id = codecId(codecName);
    SKYRING_CHECK_ARG(samples > 0, ctx("submit"), "samples must be positive");
    SKYRING_CHECK_ARG(delta.size() == count, ctx("submit"), "delta has ", delta.size(),
                      " elements; the coordinator's model has ", count);
    send(wire::encode(wire::SubmitBegin{r, id, delta.size(), samples}));
    const auto answer = receive(deadline(options.ioTimeout), "submit");
    const SubmitOutcome first = outcome(answer);
    if (first == SubmitOutcome::duplicate || first == SubmitOutcome::late) return first;
    auto codec = compression::makeCompressor(std::string(codecName));
    std::vector<std::byte> blob;
    for (std::size_t at = 0; at < delta.size(); at += options.chunkElements) {
      const std::size_t n = std::min(options.chunkElements, delta.size() - at);
      auto state = codec->makeState(n);
      blob.resize(codec->maxEncodedBytes(n));
      blob.resize(codec->encode(delta.subspan(at, n), state, blob));
      send(wire::encode(wire::SubmitChunk{at, blob}));
    }
    send(wire::encode(wire::SubmitEnd{r}));
    const SubmitOutcome end = outcome(receive(deadline(options.ioTimeout), "submit"));
    // The end's status says `counted` (already) for a submission it just counted.
    return end == SubmitOutcome::duplicate
               ? (first == SubmitOutcome::carried ? SubmitOutcome::carried : SubmitOutcome::counted)
               : end;
  }

  std::uint64_t fetch(std::uint64_t r, std::span<float> out) {
    SKYRING_CHECK_ARG(out.size() == count, ctx("fetch"), "weights span of ", out.size(),
                      " elements; the coordinator's model has ", count);
    for (;;) {  // starts over when a round closes while the slices come
      send(wire::encode(wire::Fetch{r, 0}));
      auto until = deadline(options.roundTimeout);
      std::uint64_t at = 0, from = 0;
      bool restart = false;
      while (at < count) {
        const auto f = receive(until, "fetch");
        until = deadline(options.ioTimeout);
        const auto w = wire::parseWeights(f);
        if (w.total != count || w.offset != at || w.values.size() % 4 != 0 ||
            at + w.values.size() / 4 > count) {
          SKYRING_THROW(TransportError, ctx("fetch"), "weights slice at ", w.offset, " of ",
                        w.total, " elements does not follow element ", at, " of ", count);
        }
        if (at == 0) from = w.round;
        if (w.round != from) restart = true;
        std::memcpy(out.data() + at, w.values.data(), w.values.size());
        at += w.values.size() / 4;
      }
      if (!restart) {
        if (from != kLatest) round = std::max(round, from + 1);
        return from;
      }
    }
  }

  RoundInfo status(std::uint64_t r) {
    send(wire::encode(wire::Status{r}));
    const auto s = wire::parseRoundStatus(receive(deadline(options.ioTimeout), "status"));
    RoundInfo info;
    info.round = s.round;
    info.open = s.current;
    info.state = static_cast<RoundInfo::State>(s.state);
    info.counted = s.counted;
    info.submitted = s.submitted;
    info.quorum = s.quorum;
    info.members = s.members;
    round = s.current;
    return info;
  }
};

Client::Client(ClientOptions options) : impl_(std::make_unique<Impl>()) {
  SKYRING_CHECK_ARG(!options.cluster.empty() && options.cluster.size() <= wire::kMaxNameBytes,
                    ctx("connect"), "cluster name must have 1 to ", wire::kMaxNameBytes, " bytes");
  SKYRING_CHECK_ARG(options.connectAttempts >= 1, ctx("connect"), "connectAttempts < 1");
  SKYRING_CHECK_ARG(options.chunkElements >= 1 && options.chunkElements <= (std::size_t{1} << 20),
                    ctx("connect"), "chunkElements must be in [1, 2^20]");
  impl_->options = std::move(options);
  impl_->connect();
}

Client::~Client() = default;
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;

std::uint64_t Client::openRound() const noexcept {
  return impl_->round;
}
std::uint64_t Client::elementCount() const noexcept {
  return impl_->count;
}

SubmitOutcome Client::submit(std::uint64_t round, std::span<const float> delta,
                             std::uint64_t samples, std::string_view codec) {
  return impl_->guarded([&] { return impl_->submit(round, delta, samples, codec); });
}

std::uint64_t Client::fetch(std::uint64_t round, std::span<float> weights) {
  return impl_->guarded([&] { return impl_->fetch(round, weights); });
}

RoundInfo Client::status(std::uint64_t round) {
  return impl_->guarded([&] { return impl_->status(round); });
}

void Client::close() noexcept {
  impl_->disconnect();
}

}  // namespace skyring::coordinator
