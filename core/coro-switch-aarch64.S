/* evx__ctx_switch for aarch64 (AAPCS64; see coro-switch.h).
 * void evx__ctx_switch(evx__ctx *from, evx__ctx *to): x0 = from, x1 = to.
 * Saved on the suspended stack (160 bytes, 16-byte aligned): x19-x28, x29
 * (frame pointer), x30 (return address), d8-d15. */
#if defined(__aarch64__) && defined(__ELF__)
	.text
	.globl	evx__ctx_switch
	.hidden	evx__ctx_switch
	.type	evx__ctx_switch, %function
	.p2align 4
evx__ctx_switch:
	sub	sp, sp, #160
	stp	x19, x20, [sp, #0]
	stp	x21, x22, [sp, #16]
	stp	x23, x24, [sp, #32]
	stp	x25, x26, [sp, #48]
	stp	x27, x28, [sp, #64]
	stp	x29, x30, [sp, #80]
	stp	d8, d9, [sp, #96]
	stp	d10, d11, [sp, #112]
	stp	d12, d13, [sp, #128]
	stp	d14, d15, [sp, #144]
	mov	x2, sp
	str	x2, [x0]
	ldr	x2, [x1]
	mov	sp, x2
	ldp	x19, x20, [sp, #0]
	ldp	x21, x22, [sp, #16]
	ldp	x23, x24, [sp, #32]
	ldp	x25, x26, [sp, #48]
	ldp	x27, x28, [sp, #64]
	ldp	x29, x30, [sp, #80]
	ldp	d8, d9, [sp, #96]
	ldp	d10, d11, [sp, #112]
	ldp	d12, d13, [sp, #128]
	ldp	d14, d15, [sp, #144]
	add	sp, sp, #160
	ret
	.size	evx__ctx_switch, .-evx__ctx_switch

/* First switch into a new context returns here (x30 was set to it by
 * evx__ctx_make): x19 = arg, x20 = entry. lr = 0: entry's caller is nobody. */
	.globl	evx__ctx_start
	.hidden	evx__ctx_start
	.type	evx__ctx_start, %function
	.p2align 4
evx__ctx_start:
	mov	x0, x19
	mov	x30, xzr
	br	x20
	.size	evx__ctx_start, .-evx__ctx_start
#endif
	.section .note.GNU-stack,"",%progbits
