; list_k (ANC's ListK): the value of the k-th node of a linked list.
; in:  M[0] = the address of the head node, M[1] = k (0 for the head); a node at
;      address n holds the address of the next node at M[n] and its value at M[n + 1].
; out: M[2] = the value of node k. Clobbers r0, r1.
        r0 = READ 0         ; node
        r1 = READ 1         ; k
loop:   JEZ r1, found
        r0 = READ r0        ; node = node.next
        r1 = DEC r1
        JMP loop
found:  r0 = INC r0
        r0 = READ r0        ; node.value
        WRITE 2, r0
        RET
