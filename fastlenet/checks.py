"""What counts as an integer or a real option value, in one place.

NumPy scalars count (``np.int64(3)`` is an integer, ``np.float32(0.1)`` a real); bools
do not, though Python makes them ints; a real must also be finite.
"""

import math
import numbers


def is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))
