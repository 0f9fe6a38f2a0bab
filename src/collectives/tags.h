// The collectives' names for the tag layout, which transport/tag_layout.h owns whole
// (opcode, signature, sequence, context, level, user tag, step).
#pragma once

#include "transport/tag_layout.h"

namespace skyring::collectives {

using tags::kMaxUserTag;
using tags::makeTag;
using tags::Opcode;
using tags::signatureBits;

}  // namespace skyring::collectives
