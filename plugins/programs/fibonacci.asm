; fibonacci (the paper's §4.1, Table 1): a recursive Fibonacci of depth d.
; in:  r0 = a, r1 = b (the first two terms; 0 and 1 for the Fibonacci numbers), r2 = d.
; out: r3 = x_d of x_0 = a, x_1 = b, x_{k+1} = x_k + x_{k-1} (mod the base); r2 = d again.
;      r0 and r1 hold x_d and x_{d+1}, in either order. Clobbers r0, r1, r3, lr.
; Each level of recursion saves the link register on a stack in memory (cells 0 .. d-1,
; so give the run at least d cells) and CALLs the next level: 8 steps per level, plus
; 3 for the last level (depth d takes 8·d + 3 steps). The two halves alternate which
; register receives the new term, so one ADD per level moves the pair along.
even:   JEZ r2, even_out    ; depth left?
        r2 = DEC r2
        WRITE r2, lr        ; push the return address
        r0 = ADD r0, r1     ; x_{k+2} replaces x_k
        CALL odd
        lr = READ r2        ; pop it
        r2 = INC r2
        RET
even_out: r3 = MOV r0
        RET
odd:    JEZ r2, odd_out
        r2 = DEC r2
        WRITE r2, lr
        r1 = ADD r0, r1
        CALL even
        lr = READ r2
        r2 = INC r2
        RET
odd_out: r3 = MOV r1
        RET
