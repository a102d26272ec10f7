; count_distinct: how many distinct values a sorted zero-terminated sequence at cell 0 holds.
; in:  the sequence from cell 0 to its first 0, sorted (equal values adjacent; e.g. after
;      insertion_sort). On an unsorted sequence it counts the runs of equal values.
; out: r0 = the number of distinct values. Clobbers r0..r4; memory unchanged.
; arguments: none
; result: r0
        r0 = MOV 0          ; count
        r1 = MOV 0          ; i
        r4 = MOV 0          ; the previous value (no element is 0)
loop:   r2 = READ r1
        JEZ r2, done
        r3 = EQ r2, r4      ; the same as the one before: not new
        r0 = INC r0
        r0 = SUB r0, r3
        r4 = MOV r2
        r1 = INC r1
        JMP loop
done:   RET
