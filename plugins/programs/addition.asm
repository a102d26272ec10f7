; addition (ANC): add two n-digit numbers, digit by digit with a carry.
; in:  M[0] = the radix (e.g. 10), M[1] = n; the digits of a at M[2 .. 2+n) and of b at
;      M[2+n .. 2+2n), least significant first (digits below the radix; 2·radix within the base).
; out: the n + 1 digits of a + b at M[2+2n .. 3+2n], least significant first. Clobbers r0..r7.
        r0 = READ 0         ; radix
        r1 = READ 1         ; digits left
        r2 = MOV 2          ; &a[i]
        r3 = ADD r2, r1     ; &b[i]
        r4 = ADD r3, r1     ; &sum[i]
        r5 = ZERO           ; carry
loop:   JEZ r1, last
        r6 = READ r2
        r7 = READ r3
        r6 = ADD r6, r7
        r6 = ADD r6, r5     ; a[i] + b[i] + carry
        r5 = DIV r6, r0     ; the next carry
        r6 = MOD r6, r0     ; the digit
        WRITE r4, r6
        r2 = INC r2
        r3 = INC r3
        r4 = INC r4
        r1 = DEC r1
        JMP loop
last:   WRITE r4, r5        ; the final carry is the top digit
        RET
