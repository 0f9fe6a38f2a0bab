// stub
#include "skyring/torch.h"
