; access (ANC): read the k-th element of an array.
; in:  M[0] = k; the array A starts at cell 1 (A[i] is M[1 + i]).
; out: M[0] = A[k]. Clobbers r0.
access: r0 = READ 0         ; k
        r0 = INC r0         ; the address of A[k]
        r0 = READ r0
        WRITE 0, r0
        RET
