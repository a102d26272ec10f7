; reverse: reverse the zero-terminated sequence at cell 0 in place.
; in:  the sequence starts at cell 0 and ends at the first 0 (its elements are non-zero).
; out: the same cells in reverse order; the 0 stays. Clobbers r0..r4; keeps r5, r6.
; arguments: none
; result: memory
        r1 = MOV 0          ; j: find the end
find:   r2 = READ r1
        JEZ r2, found
        r1 = INC r1
        JMP find
found:  r0 = MOV 0          ; i
swap:   JEZ r1, done        ; j is one past the element to swap
        r1 = DEC r1
        r3 = LT r0, r1      ; i < j: swap M[i] and M[j]
        JEZ r3, done
        r2 = READ r0
        r4 = READ r1
        WRITE r0, r4
        WRITE r1, r2
        r0 = INC r0
        JMP swap
done:   RET
