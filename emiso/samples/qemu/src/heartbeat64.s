/*
 * heartbeat64: a tiny bare-metal aarch64 test program for the EMISO qemu
 * agency. It stands in for an SO3 kernel but is not SO3: it prints an
 * SO3-style boot banner on the PL011 UART of QEMU's virt board, then
 * "heartbeat N" once per second, and answers console commands.
 *
 * The counter lives in RAM, so a VM restored from QEMU's migration stream
 * continues it. Between heartbeats the CPU sleeps in WFI: the virtual
 * timer and the UART receive interrupt are enabled in the GIC and masked
 * in the CPU, which wakes WFI without taking an exception.
 *
 * Linked at 0x40080000 (RAM base plus 0x80000), where QEMU's -kernel puts
 * a raw arm64 image; the FIT's load and entry addresses say the same.
 */

	.equ	UART_BASE, 0x09000000
	.equ	UART_DR, 0x00
	.equ	UART_FR, 0x18
	.equ	UART_IMSC, 0x38
	.equ	FR_RXFE, 4		/* bit: receive FIFO empty */
	.equ	FR_TXFF, 5		/* bit: transmit FIFO full */
	.equ	IMSC_RXIM, 0x10

	.equ	GICD_BASE, 0x08000000
	.equ	GICC_BASE, 0x08010000
	.equ	VTIMER_ID, 27		/* PPI 11: the virtual timer */
	.equ	UART_ID, 33		/* SPI 1: UART0 of the virt board */

	.equ	LINE_MAX, 63

	.section .text.boot, "ax"
	.global	_start
_start:
	msr	daifset, #0xf
	ldr	x0, =stack_top
	mov	sp, x0
	ldr	x0, =__bss_start
	ldr	x1, =__bss_end
1:	cmp	x0, x1
	b.hs	2f
	str	xzr, [x0], #8
	b	1b
2:	bl	gic_init
	ldr	x1, =UART_BASE
	mov	w0, #IMSC_RXIM
	str	w0, [x1, #UART_IMSC]
	adr	x0, banner
	bl	puts
	mrs	x0, CurrentEL
	lsr	x0, x0, #2
	adr	x1, el_text
	bl	put_labelled
	mrs	x0, cntfrq_el0
	adr	x1, freq_text
	bl	put_labelled
	adr	x0, ready
	bl	puts

main_loop:
	mrs	x0, cntfrq_el0
	msr	cntv_tval_el0, x0
	mov	x0, #1			/* enabled, interrupt not masked */
	msr	cntv_ctl_el0, x0
	isb
wait:
	wfi
	bl	poll_console
	mrs	x0, cntv_ctl_el0
	tbz	x0, #2, wait		/* ISTATUS: the second has not passed */
	msr	cntv_ctl_el0, xzr	/* disabling the timer drops its interrupt */
	isb
	ldr	x1, =counter
	ldr	x0, [x1]
	add	x0, x0, #1
	str	x0, [x1]
	adr	x1, heartbeat_text
	bl	put_labelled
	b	main_loop

/* Enable the GIC distributor and CPU interface for our two interrupts. */
gic_init:
	ldr	x1, =GICD_BASE
	mov	w0, #1
	str	w0, [x1, #0x000]	/* GICD_CTLR */
	mov	w0, #(1 << VTIMER_ID)
	str	w0, [x1, #0x100]	/* GICD_ISENABLER0 */
	mov	w0, #(1 << (UART_ID - 32))
	str	w0, [x1, #0x104]	/* GICD_ISENABLER1 */
	mov	w0, #1
	strb	w0, [x1, #(0x800 + UART_ID)]	/* GICD_ITARGETSR: CPU 0 */
	ldr	x1, =GICC_BASE
	mov	w0, #0xff
	str	w0, [x1, #0x004]	/* GICC_PMR */
	mov	w0, #1
	str	w0, [x1, #0x000]	/* GICC_CTLR */
	ret

/* Read the characters waiting on the UART, echo them, run complete lines. */
poll_console:
	stp	x29, x30, [sp, #-16]!
	ldr	x3, =UART_BASE
3:	ldr	w0, [x3, #UART_FR]
	tbnz	w0, #FR_RXFE, 9f
	ldr	w0, [x3, #UART_DR]
	and	w0, w0, #0xff
	cmp	w0, #'\r'
	b.eq	5f
	cmp	w0, #'\n'
	b.eq	5f
	ldr	x1, =line_length
	ldr	x2, [x1]
	cmp	x2, #LINE_MAX
	b.hs	3b
	ldr	x4, =line_buffer
	strb	w0, [x4, x2]
	add	x2, x2, #1
	str	x2, [x1]
	bl	putc
	ldr	x3, =UART_BASE
	b	3b
5:	bl	run_line
	ldr	x3, =UART_BASE
	b	3b
9:	ldp	x29, x30, [sp], #16
	ret

/* Run the command in line_buffer, then empty it. */
run_line:
	stp	x29, x30, [sp, #-16]!
	ldr	x1, =line_length
	ldr	x2, [x1]
	cbz	x2, 8f
	ldr	x4, =line_buffer
	strb	wzr, [x4, x2]		/* terminate the line */
	str	xzr, [x1]
	adr	x0, crlf
	bl	puts
	ldr	x0, =line_buffer
	adr	x1, cmd_help
	bl	strequal
	cbnz	x0, 10f
	ldr	x0, =line_buffer
	adr	x1, cmd_count
	bl	strequal
	cbnz	x0, 11f
	ldr	x0, =line_buffer
	adr	x1, cmd_reset
	bl	strequal
	cbnz	x0, 12f
	adr	x0, unknown_text
	bl	puts
	ldr	x0, =line_buffer
	bl	puts
	adr	x0, unknown_tail
	bl	puts
	b	8f
10:	adr	x0, help_text
	bl	puts
	b	8f
11:	ldr	x0, =counter
	ldr	x0, [x0]
	adr	x1, count_text
	bl	put_labelled
	b	8f
12:	ldr	x0, =counter
	str	xzr, [x0]
	adr	x0, reset_text
	bl	puts
8:	ldp	x29, x30, [sp], #16
	ret

/* x0 = 1 when the strings at x0 and x1 are equal, else 0. */
strequal:
	ldrb	w2, [x0], #1
	ldrb	w3, [x1], #1
	cmp	w2, w3
	b.ne	1f
	cbnz	w2, strequal
	mov	x0, #1
	ret
1:	mov	x0, #0
	ret

/* Print the string at x1, the decimal number x0, then CR LF. */
put_labelled:
	stp	x29, x30, [sp, #-16]!
	stp	x19, x20, [sp, #-16]!
	mov	x19, x0
	mov	x0, x1
	bl	puts
	mov	x0, x19
	bl	put_decimal
	adr	x0, crlf
	bl	puts
	ldp	x19, x20, [sp], #16
	ldp	x29, x30, [sp], #16
	ret

/* Print x0 in decimal. */
put_decimal:
	stp	x29, x30, [sp, #-16]!
	sub	sp, sp, #32
	mov	x2, sp
	add	x2, x2, #31
	strb	wzr, [x2]
	mov	x3, #10
1:	udiv	x4, x0, x3
	msub	x5, x4, x3, x0
	add	w5, w5, #'0'
	sub	x2, x2, #1
	strb	w5, [x2]
	mov	x0, x4
	cbnz	x0, 1b
	mov	x0, x2
	bl	puts
	add	sp, sp, #32
	ldp	x29, x30, [sp], #16
	ret

/* Print the NUL-terminated string at x0. */
puts:
	stp	x29, x30, [sp, #-16]!
	mov	x6, x0
1:	ldrb	w0, [x6], #1
	cbz	w0, 2f
	bl	putc
	b	1b
2:	ldp	x29, x30, [sp], #16
	ret

/* Print the character in w0. */
putc:
	ldr	x7, =UART_BASE
1:	ldr	w8, [x7, #UART_FR]
	tbnz	w8, #FR_TXFF, 1b
	str	w0, [x7, #UART_DR]
	ret

	.section .rodata
	.balign	8
banner:
	.ascii	"\r\n"
	.ascii	"SO3-style boot banner of the EMISO heartbeat64 test ME\r\n"
	.ascii	"This is a tiny bare-metal aarch64 test program standing in for SO3; "
	.ascii	"it is not SO3.\r\n"
	.ascii	"Board: QEMU virt, PL011 UART at 0x09000000, loaded at 0x40080000\r\n"
	.asciz	""
el_text:
	.asciz	"Exception level: EL"
freq_text:
	.asciz	"Timer frequency (Hz): "
ready:
	.asciz	"ME is living; commands: help, count, reset\r\n"
heartbeat_text:
	.asciz	"heartbeat "
count_text:
	.asciz	"count: heartbeat "
reset_text:
	.asciz	"counter reset to 0\r\n"
help_text:
	.asciz	"commands: help (this text), count (print the counter), reset (set it to 0)\r\n"
unknown_text:
	.asciz	"unknown command: "
unknown_tail:
	.ascii	" (try help)"
crlf:
	.asciz	"\r\n"
cmd_help:
	.asciz	"help"
cmd_count:
	.asciz	"count"
cmd_reset:
	.asciz	"reset"

	.bss
	.balign	8
counter:
	.quad	0
line_length:
	.quad	0
line_buffer:
	.space	LINE_MAX + 1
