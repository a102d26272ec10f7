; swap (ANC): swap two elements of memory.
; in:  M[0] = p, M[1] = q (addresses).
; out: M[p] and M[q] exchanged. Clobbers r0..r3.
        r0 = READ 0         ; p
        r1 = READ 1         ; q
        r2 = READ r0        ; M[p]
        r3 = READ r1        ; M[q]
        WRITE r0, r3
        WRITE r1, r2
        RET
