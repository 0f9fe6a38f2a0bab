// Umbrella header of the skyring C++ API.
#pragma once

#include "skyring/buffer_view.h"
#include "skyring/communicator.h"
#include "skyring/config.h"
#include "skyring/dtype.h"
#include "skyring/error.h"
#include "skyring/inprocess_transport.h"
#include "skyring/logging.h"
#include "skyring/reduce_op.h"
#include "skyring/runtime.h"
#include "skyring/transport.h"
#include "skyring/version.h"
