; bubble_sort (ANC's sort): sort a zero-terminated sequence in place, ascending.
; in:  the sequence starts at cell 0 and ends at the first 0 (like a C string:
;      its elements are non-zero).
; out: the same cells sorted ascending; the 0 stays. Clobbers r0..r5.
; arguments: none
; result: memory
pass:   r0 = ZERO           ; i
        r3 = ZERO           ; swapped this pass?
        r1 = READ r0        ; x = M[i]
        JEZ r1, done        ; the empty sequence
inner:  r4 = INC r0
        r2 = READ r4        ; y = M[i + 1]
        JEZ r2, end         ; the end of the sequence
        r5 = LT r2, r1      ; y < x: out of order
        JEZ r5, next
        WRITE r0, r2
        WRITE r4, r1
        r3 = MOV 1
next:   r1 = MAX r1, r2     ; M[i + 1] now holds the larger
        r0 = MOV r4
        JMP inner
end:    JEZ r3, done        ; a pass without a swap: sorted
        JMP pass
done:   RET
