"""Developer scripts that read machine code (scripts/sass_ctrl.py): the control-bit decoding on
two instructions of a real sm_90a listing (split_kernel_ws, twenty-first session), a global load
and the first instruction that uses its result."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import sass_ctrl  # noqa: E402

LISTING = """\
        /*37d0*/              @!P3 LDG.E.CONSTANT R174, desc[UR14][R20.64] ;                           /* 0x0000000e14aeb981 */
                                                                                                       /* 0x000ea4000c1e9900 */
        /*3a00*/                   IMAD.MOV.U32 R178, RZ, RZ, R174 ;                                   /* 0x000000ffffb27224 */
                                                                                                       /* 0x004fe200078e00ae */
"""


def test_load_sets_a_scoreboard_and_its_use_waits_for_it():
    (a0, t0, stall0, wr0, rd0, wait0), (a1, t1, stall1, wr1, rd1, wait1) = sass_ctrl.decode(LISTING.split("\n"))
    assert (a0, a1) == (0x37D0, 0x3A00)
    assert t0.startswith("@!P3 LDG") and t1.startswith("IMAD.MOV")
    assert (stall0, wr0, rd0, wait0) == (2, 2, 7, 0)  # sets SB2 when R174 is written, waits for nothing
    assert (stall1, wr1, rd1, wait1) == (1, 7, 7, 1 << 2)  # waits for SB2 before it reads R174
