; calculator (the paper's §4.2): one ALU op on two numbers, chosen by an op code.
; in:  r0 = the op code, r1 = a, r2 = b. Op codes: 0 add, 1 sub, 2 mul, 3 div, 4 mod,
;      5 min, 6 max, 7 eq, 8 lt (results mod the base; div and mod by 0 give 0).
; out: r0 = a op b; an unknown op code gives r0 = 0. Clobbers r0, r3.
; A jump table: the op code picks one of nine two-line entries.
        r3 = LT r0, 9
        JEZ r3, unknown
        r3 = ADD r0, r0     ; two lines per entry
        r3 = ADD r3, table
        JMP r3              ; a computed jump
table:  r0 = ADD r1, r2
        RET
        r0 = SUB r1, r2
        RET
        r0 = MUL r1, r2
        RET
        r0 = DIV r1, r2
        RET
        r0 = MOD r1, r2
        RET
        r0 = MIN r1, r2
        RET
        r0 = MAX r1, r2
        RET
        r0 = EQ r1, r2
        RET
        r0 = LT r1, r2
        RET
unknown: r0 = ZERO
        RET
