/* What every rule source (sgd.c, adam.c, ...) includes: its element type (element.h),
 * torch's operations (torch_ops.h), the thread split (parallel.h), prefetch
 * (prefetch.h), the per-tensor coefficients (coefficients.h), and the argument structs
 * of every loop, which the build generates from their one declaration
 * (pyroopt/native/specs.py) into pyroopt_specs.h.
 *
 * A rule source defines, per loop, its exported entry TYPED(pyroopt_<name>), which takes
 * one `const pyroopt_<name>_args *`, reads its fields by name and hands the work to
 * pyroopt_parallel.
 */
#ifndef PYROOPT_RULE_H
#define PYROOPT_RULE_H

#include <stdint.h>

#include "coefficients.h"
#include "element.h"
#include "parallel.h"
#include "prefetch.h"
#include "pyroopt_specs.h"
#include "torch_ops.h"

#endif
