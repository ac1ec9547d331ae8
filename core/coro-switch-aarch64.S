/* evx__ctx_switch for aarch64 (AAPCS64; see coro-switch.h).
 * void evx__ctx_switch(evx__ctx *from, evx__ctx *to): x0 = from, x1 = to.
 * Saved on the suspended stack, 176 bytes (sp stays 16-byte aligned):
 *   [sp +   0] x19-x28      [sp +  80] x29 (frame pointer), x30 (return address)
 *   [sp +  96] d8-d15       [sp + 160] FPCR, then 8 bytes of padding
 * Everything else is caller-saved (only the low 64 bits of v8-v15 are
 * callee-saved). FPCR (rounding mode, flush-to-zero, default NaN) belongs to
 * the context, as the MXCSR/x87 control word do in the x86-64 backend and the
 * FP environment does in ucontext's; it is written back only when it differs,
 * since writing FPCR can be slow. FPSR (the sticky exception flags) is not
 * kept, like in the x86-64 backend.
 * tests/test_coro_switch.c checks every register here, under qemu-user in CI
 * (make test-aarch64). */
#if defined(__aarch64__) && defined(__ELF__)

/* Branch Target Identification: a landing pad where an indirect call may
 * enter (a hint, a no-op on cores without BTI), and the ELF note saying this
 * object is BTI-ready, so a binary built with -mbranch-protection keeps BTI. */
#if defined(__ARM_FEATURE_BTI_DEFAULT) && __ARM_FEATURE_BTI_DEFAULT
#define EVX_BTI_C hint 34
#define EVX_GNU_PROPERTY_BTI 1
#else
#define EVX_BTI_C
#define EVX_GNU_PROPERTY_BTI 0
#endif

	.text
	.globl	evx__ctx_switch
	.hidden	evx__ctx_switch
	.type	evx__ctx_switch, %function
	.p2align 4
evx__ctx_switch:
	.cfi_startproc
	EVX_BTI_C
	sub	sp, sp, #176
	.cfi_def_cfa_offset 176
	stp	x19, x20, [sp, #0]
	stp	x21, x22, [sp, #16]
	stp	x23, x24, [sp, #32]
	stp	x25, x26, [sp, #48]
	stp	x27, x28, [sp, #64]
	stp	x29, x30, [sp, #80]
	.cfi_offset x29, -96
	.cfi_offset x30, -88
	stp	d8, d9, [sp, #96]
	stp	d10, d11, [sp, #112]
	stp	d12, d13, [sp, #128]
	stp	d14, d15, [sp, #144]
	mrs	x2, fpcr
	str	x2, [sp, #160]
	mov	x3, sp
	str	x3, [x0]
	/* The other context's frame, same layout: the CFI above describes it too. */
	ldr	x3, [x1]
	mov	sp, x3
	ldr	x3, [sp, #160]
	cmp	x2, x3
	b.eq	1f
	msr	fpcr, x3
1:
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
	add	sp, sp, #176
	.cfi_def_cfa_offset 0
	.cfi_restore x29
	.cfi_restore x30
	ret
	.cfi_endproc
	.size	evx__ctx_switch, .-evx__ctx_switch

/* The first switch into a new context "returns" here (evx__ctx_make put this
 * address in the saved x30 and a zero x29): x19 = arg, x20 = entry, sp = the
 * 16-byte aligned stack top. Reached by ret, so it needs no BTI landing pad;
 * entry is called with blr, which every C function's landing pad accepts
 * (br from a register other than x16/x17 would not). entry never returns; if
 * it does, abort rather than run off the stack. */
	.globl	evx__ctx_start
	.hidden	evx__ctx_start
	.type	evx__ctx_start, %function
	.p2align 4
evx__ctx_start:
	.cfi_startproc
	.cfi_undefined x30 /* the outermost frame: unwinders stop here */
	mov	x0, x19
	blr	x20
	bl	abort
	.cfi_endproc
	.size	evx__ctx_start, .-evx__ctx_start

#if EVX_GNU_PROPERTY_BTI
	.pushsection .note.gnu.property, "a"
	.p2align 3
	.word	4		/* name size: "GNU\0" */
	.word	16		/* descriptor size */
	.word	5		/* NT_GNU_PROPERTY_TYPE_0 */
	.asciz	"GNU"
	.word	0xc0000000	/* GNU_PROPERTY_AARCH64_FEATURE_1_AND */
	.word	4
	.word	1		/* GNU_PROPERTY_AARCH64_FEATURE_1_BTI */
	.word	0		/* padding to 8 bytes */
	.popsection
#endif
#endif
	.section .note.GNU-stack,"",%progbits
