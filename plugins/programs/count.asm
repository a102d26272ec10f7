; count: how many times a value occurs in the zero-terminated sequence at cell 0.
; in:  the sequence from cell 0 to its first 0; r6 = the value to count.
; out: r0 = its number of occurrences (mod the base). Clobbers r0..r3; memory unchanged.
; arguments: r6
; result: r0
        r0 = MOV 0          ; count
        r1 = MOV 0          ; i
loop:   r2 = READ r1
        JEZ r2, done
        r3 = EQ r2, r6
        r0 = ADD r0, r3
        r1 = INC r1
        JMP loop
done:   RET
