// Writes one well-formed frame of every coordinator message into a folder (the fuzzer's
// seed corpus), each prefixed by the control byte coordinator_wire_fuzz.cc reads first.
//   usage: coordinator_wire_seeds DIR
#include <fstream>
#include <string>
#include <vector>

#include "coordinator/wire.h"

using namespace skyring::coordinator::wire;

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::vector<std::byte> blob(40, std::byte{3});
  const std::vector<std::byte> values(16, std::byte{0});
  const std::vector<std::vector<std::byte>> frames = {
      encode(Challenge{}),
      encode(Hello{"aws", {}, {}}),
      encode(Welcome{1, 2, {}}),
      encode(SubmitBegin{1, SubmitCodec::int8, 100, 7}),
      encode(SubmitChunk{0, blob}),
      encode(SubmitEnd{1}),
      encode(Fetch{1, 0}),
      encode(Weights{1, 0, 4, values}),
      encode(Status{1}),
      encode(RoundStatus{1, 2, RoundState::closed, true, 2, 2, 3}),
      encode(ErrorMessage{ErrorCode::unauthorized, "wrong token"}),
      encode(Late{1, 2, LateDisposition::carried}),
  };
  std::vector<std::byte> all = {std::byte{0xbf}};
  for (std::size_t i = 0; i < frames.size(); ++i) {
    std::ofstream out(std::string(argv[1]) + "/seed-" + std::to_string(i), std::ios::binary);
    out.put(static_cast<char>(0x80 | i));
    out.write(reinterpret_cast<const char*>(frames[i].data()),
              static_cast<std::streamsize>(frames[i].size()));
    all.insert(all.end(), frames[i].begin(), frames[i].end());
  }
  std::ofstream out(std::string(argv[1]) + "/seed-all", std::ios::binary);
  out.write(reinterpret_cast<const char*>(all.data()), static_cast<std::streamsize>(all.size()));
  return 0;
}
