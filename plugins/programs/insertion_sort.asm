; insertion_sort (the paper's §4.3 and Fig. 4): sort a zero-terminated sequence in place, ascending.
; in:  the sequence starts at cell 0 and ends at the first 0 (like a C string:
;      its elements are non-zero).
; out: the same cells sorted ascending; the 0 stays. Clobbers r0..r5.
; arguments: none
; result: memory
        r0 = MOV 1          ; i
        r1 = READ 0
        JEZ r1, done        ; the empty sequence
outer:  r1 = READ r0        ; key = M[i]
        JEZ r1, done        ; the end of the sequence
        r2 = MOV r0         ; j = i
inner:  JEZ r2, place       ; j = 0: key goes first
        r3 = DEC r2
        r4 = READ r3        ; M[j - 1]
        r5 = LT r1, r4      ; key < M[j - 1]: shift it up
        JEZ r5, place
        WRITE r2, r4
        r2 = MOV r3         ; j = j - 1
        JMP inner
place:  WRITE r2, r1        ; M[j] = key
        r0 = INC r0
        JMP outer
done:   RET
