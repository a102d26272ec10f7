; sum: the sum of the zero-terminated sequence at cell 0, mod the base.
; in:  the sequence from cell 0 to its first 0.
; out: r0 = the sum of its elements mod the base. Clobbers r0..r2; memory unchanged.
; arguments: none
; result: r0
        r0 = MOV 0          ; the sum so far
        r1 = MOV 0          ; i
loop:   r2 = READ r1
        JEZ r2, done
        r0 = ADD r0, r2
        r1 = INC r1
        JMP loop
done:   RET
