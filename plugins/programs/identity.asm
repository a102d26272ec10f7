; identity: do nothing. A chain's step that chooses it leaves memory and registers as they
; are, so a chain of K steps can stop after fewer programs.
; in:  anything.
; out: the same memory and registers.
; arguments: none
; result: none
        RET
