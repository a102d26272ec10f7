; increment (ANC): add 1 to every element of a zero-terminated array.
; in:  the array starts at cell 0 and ends at the first 0 (elements are below the base's top value).
; out: each element before the 0 is one larger, in place. Clobbers r0, r1.
        r0 = ZERO           ; i
loop:   r1 = READ r0        ; A[i]
        JEZ r1, done        ; the terminating 0
        r1 = INC r1
        WRITE r0, r1
        r0 = INC r0
        JMP loop
done:   RET
