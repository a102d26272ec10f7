; max: the largest element of the zero-terminated sequence at cell 0.
; in:  the sequence from cell 0 to its first 0.
; out: r0 = its largest element (0 for the empty sequence). Clobbers r0..r2; memory unchanged.
; arguments: none
; result: r0
        r0 = MOV 0          ; the largest so far
        r1 = MOV 0          ; i
loop:   r2 = READ r1
        JEZ r2, done
        r0 = MAX r0, r2
        r1 = INC r1
        JMP loop
done:   RET
