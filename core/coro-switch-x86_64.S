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
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %rbp, 0
	pushq	%rbx
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %rbx, 0
	pushq	%r12
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %r12, 0
	pushq	%r13
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %r13, 0
	pushq	%r14
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %r14, 0
	pushq	%r15
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %r15, 0
	subq	$8, %rsp
	.cfi_adjust_cfa_offset 8
	stmxcsr	(%rsp)
	fnstcw	4(%rsp)
	movq	%rsp, (%rdi)
	/* From here rsp is the other context's frame, laid out the same way,
	 * so the CFA rules above describe it too. */
	movq	(%rsi), %rsp
	ldmxcsr	(%rsp)
	fldcw	4(%rsp)
	addq	$8, %rsp
	.cfi_adjust_cfa_offset -8
	popq	%r15
	.cfi_adjust_cfa_offset -8
	.cfi_restore %r15
	popq	%r14
	.cfi_adjust_cfa_offset -8
	.cfi_restore %r14
	popq	%r13
	.cfi_adjust_cfa_offset -8
	.cfi_restore %r13
	popq	%r12
	.cfi_adjust_cfa_offset -8
	.cfi_restore %r12
	popq	%rbx
	.cfi_adjust_cfa_offset -8
	.cfi_restore %rbx
	popq	%rbp
	.cfi_adjust_cfa_offset -8
	.cfi_restore %rbp
	ret
	.cfi_endproc
	.size	evx__ctx_switch, .-evx__ctx_switch

/* First switch into a new context returns here (evx__ctx_make put this
 * address where the return address is popped): r12 = arg, r13 = entry.
 * rsp points at the zero slot just below the 16-byte aligned top; dropping
 * it aligns rsp, so the call gives entry a correctly aligned frame. The
 * unwinder stops here (rip undefined). entry must never return (coro.c's
 * entry switches away for the last time); if it does, abort rather than
 * run off the stack, as the aarch64 switch does. */
	.globl	evx__ctx_start
	.hidden	evx__ctx_start
	.type	evx__ctx_start, @function
	.p2align 4
evx__ctx_start:
	.cfi_startproc
	.cfi_undefined %rip
	addq	$8, %rsp
	movq	%r12, %rdi
	callq	*%r13
	callq	abort@PLT
	ud2
	.cfi_endproc
	.size	evx__ctx_start, .-evx__ctx_start
#endif
	.section .note.GNU-stack,"",%progbits
