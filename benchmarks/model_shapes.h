// The gradient lists of two real models, in the order of their parameters (the forward
// order; a backward pass produces them roughly in reverse): torchvision's resnet50 (161
// tensors, 25,557,032 parameters) and Hugging Face's BertModel for bert-base-uncased (199
// tensors, 109,482,240 parameters). engine_bench times them and prints them as JSON
// (--print-shapes) for gloo_engine_peer.py, so this file is the one home of the shapes.
//
// Header-only and stateless: any thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace skyring::bench {

struct Param {
  std::string name;
  std::vector<std::int64_t> shape;

  std::int64_t count() const {
    std::int64_t n = 1;
    for (const std::int64_t d : shape)
      n *= d;
    return n;
  }
};

struct Model {
  std::string name;
  std::vector<Param> params;

  std::int64_t count() const {
    std::int64_t n = 0;
    for (const Param& p : params)
      n += p.count();
    return n;
  }
};

// torchvision.models.resnet50(): conv1, bn1, four stages of bottlenecks (3, 4, 6, 3 blocks
// of widths 64, 128, 256, 512, expansion 4; the first block of each stage has a 1x1
// downsample with its batch norm), fc to 1000 classes. Convolutions have no bias.
inline Model resnet50() {
  Model m{"resnet50", {}};
  auto add = [&](std::string name, std::vector<std::int64_t> shape) {
    m.params.push_back({std::move(name), std::move(shape)});
  };
  auto bn = [&](const std::string& prefix, std::int64_t c) {
    add(prefix + ".weight", {c});
    add(prefix + ".bias", {c});
  };
  add("conv1.weight", {64, 3, 7, 7});
  bn("bn1", 64);
  const int blocks[] = {3, 4, 6, 3};
  std::int64_t inplanes = 64;
  for (int stage = 0; stage < 4; ++stage) {
    const std::int64_t planes = std::int64_t{64} << stage;
    for (int b = 0; b < blocks[stage]; ++b) {
      const std::string p = "layer" + std::to_string(stage + 1) + "." + std::to_string(b);
      add(p + ".conv1.weight", {planes, inplanes, 1, 1});
      bn(p + ".bn1", planes);
      add(p + ".conv2.weight", {planes, planes, 3, 3});
      bn(p + ".bn2", planes);
      add(p + ".conv3.weight", {planes * 4, planes, 1, 1});
      bn(p + ".bn3", planes * 4);
      if (b == 0) {
        add(p + ".downsample.0.weight", {planes * 4, inplanes, 1, 1});
        bn(p + ".downsample.1", planes * 4);
      }
      inplanes = planes * 4;
    }
  }
  add("fc.weight", {1000, 2048});
  add("fc.bias", {1000});
  return m;
}

// transformers.BertModel(bert-base-uncased): embeddings (30522-word vocabulary, 512
// positions, 2 token types, LayerNorm), 12 layers of self-attention (query, key, value,
// output dense 768x768 with biases, LayerNorm) and feed-forward (768->3072->768 with
// biases, LayerNorm), and the pooler. Linear weights are [out, in], as torch stores them.
inline Model bertBase() {
  Model m{"bert-base", {}};
  auto add = [&](std::string name, std::vector<std::int64_t> shape) {
    m.params.push_back({std::move(name), std::move(shape)});
  };
  auto linear = [&](const std::string& prefix, std::int64_t out, std::int64_t in) {
    add(prefix + ".weight", {out, in});
    add(prefix + ".bias", {out});
  };
  auto layerNorm = [&](const std::string& prefix) {
    add(prefix + ".weight", {768});
    add(prefix + ".bias", {768});
  };
  add("embeddings.word_embeddings.weight", {30522, 768});
  add("embeddings.position_embeddings.weight", {512, 768});
  add("embeddings.token_type_embeddings.weight", {2, 768});
  layerNorm("embeddings.LayerNorm");
  for (int l = 0; l < 12; ++l) {
    const std::string p = "encoder.layer." + std::to_string(l);
    linear(p + ".attention.self.query", 768, 768);
    linear(p + ".attention.self.key", 768, 768);
    linear(p + ".attention.self.value", 768, 768);
    linear(p + ".attention.output.dense", 768, 768);
    layerNorm(p + ".attention.output.LayerNorm");
    linear(p + ".intermediate.dense", 3072, 768);
    linear(p + ".output.dense", 768, 3072);
    layerNorm(p + ".output.LayerNorm");
  }
  linear("pooler.dense", 768, 768);
  return m;
}

inline std::vector<Model> allModels() {
  return {resnet50(), bertBase()};
}

}  // namespace skyring::bench
