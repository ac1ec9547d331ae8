/* evx__ctx_switch for x86-64 System V (see coro-switch.h).
 * void evx__ctx_switch(evx__ctx *from, evx__ctx *to): rdi = from, rsi = to.
 * Saved on the suspended stack, low to high: mxcsr + x87 control word (8
 * bytes), r15, r14, r13, r12, rbx, rbp, return address. Everything else is
 * caller-saved, so the C caller does not expect it to survive the call. */
#if defined(__x86_64__) && defined(__ELF__)
	.text
	.globl	evx__ctx_switch
	.hidden	evx__ctx_switch
	.type	evx__ctx_switch, @function
	.p2align 4
evx__ctx_switch:
	.cfi_startproc
	pushq	%rbp
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	subq	$8, %rsp
	stmxcsr	(%rsp)
	fnstcw	4(%rsp)
	movq	%rsp, (%rdi)
	movq	(%rsi), %rsp
	ldmxcsr	(%rsp)
	fldcw	4(%rsp)
	addq	$8, %rsp
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	popq	%rbp
	ret
	.cfi_endproc
	.size	evx__ctx_switch, .-evx__ctx_switch

/* First switch into a new context returns here (evx__ctx_make put this
 * address where the return address is popped): r12 = arg, r13 = entry.
 * rsp points at a zero "return address", as at a function's entry, so the
 * jump gives entry a correctly aligned frame whose caller is nobody. */
	.globl	evx__ctx_start
	.hidden	evx__ctx_start
	.type	evx__ctx_start, @function
	.p2align 4
evx__ctx_start:
	movq	%r12, %rdi
	jmpq	*%r13
	.size	evx__ctx_start, .-evx__ctx_start
#endif
	.section .note.GNU-stack,"",%progbits
