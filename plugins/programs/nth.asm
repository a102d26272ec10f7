; nth: the k-th element of the zero-terminated sequence at cell 0, counting from 0.
; in:  the sequence from cell 0; r6 = k (below the number of memory cells).
; out: r0 = M[k] (0 at and after the terminator). Clobbers r0; memory unchanged.
; arguments: r6
; result: r0
        r0 = READ r6
        RET
