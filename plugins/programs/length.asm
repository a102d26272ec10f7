; length: how many elements the zero-terminated sequence at cell 0 holds (strlen).
; in:  the sequence from cell 0 to its first 0.
; out: r0 = its length (the address of the 0). Clobbers r0, r2; memory unchanged.
; arguments: none
; result: r0
        r0 = MOV 0
loop:   r2 = READ r0
        JEZ r2, done
        r0 = INC r0
        JMP loop
done:   RET
