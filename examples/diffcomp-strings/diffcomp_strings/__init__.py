"""Library programs as a third party ships them: assembly text, registered by name.

After ``pip install``, ``last`` and ``first`` can be named in a recipe's
``[computer] library`` and chained like the built-in programs; like them they
keep ``r6`` and state their convention on ``; arguments:``/``; result:`` lines.
"""

import diffcomp

LAST = """\
; last: the last element of the zero-terminated sequence at cell 0.
; out: r0 = the last element (0 for the empty sequence). Clobbers r0..r2; memory unchanged.
; arguments: none
; result: r0
        r0 = MOV 0
        r1 = MOV 0          ; i
loop:   r2 = READ r1
        JEZ r2, done
        r0 = MOV r2
        r1 = INC r1
        JMP loop
done:   RET
"""

FIRST = """\
; first: the first element of the zero-terminated sequence at cell 0.
; out: r0 = M[0]. Clobbers r0; memory unchanged.
; arguments: none
; result: r0
        r0 = READ 0
        RET
"""


@diffcomp.hookimpl
def register_programs(register):
    register("last", LAST)
    register("first", FIRST)
