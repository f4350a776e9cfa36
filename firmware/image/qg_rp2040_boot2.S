/*
 * RP2040 second-stage boot loader ("boot2") for qgen's flashable images.
 *
 * The RP2040 boot ROM copies the first 256 bytes of the QSPI flash to SRAM, checks the CRC-32 in their
 * last 4 bytes (codegen/target/image.py pads this code to 252 bytes and appends it) and runs them. This
 * code sets the flash interface (SSI) up for execute-in-place with the plain serial read command 03h,
 * which every SPI NOR flash answers (slower than quad reads, but needs no chip-specific set-up), then
 * enters the image through its vector table at 0x10000100: VTOR, stack pointer, reset handler.
 *
 * Position-independent (the ROM runs it from SRAM), no stack use beyond lr.
 */
    .syntax unified
    .cpu cortex-m0plus
    .thumb

    .equ XIP_BASE, 0x10000000
    .equ SSI_BASE, 0x18000000       /* XIP_SSI: a Synopsys DW_apb_ssi */
    .equ SSI_CTRLR0, 0x00
    .equ SSI_CTRLR1, 0x04
    .equ SSI_SSIENR, 0x08
    .equ SSI_BAUDR, 0x14
    .equ SSI_SPI_CTRLR0, 0xf4
    .equ VTOR, 0xe000ed08
    .equ CLOCK_DIVIDER, 4           /* flash clock = clk_sys / 4 (even, as the SSI requires) */
    /* CTRLR0: standard 1-bit SPI frames (SPI_FRF 0, bit 21), 32-bit data frames (DFS_32 = 31, bit 16),
     * EEPROM read mode (TMOD 3, bit 8): send instruction + address, then receive. */
    .equ CTRLR0_XIP, (0 << 21) | (31 << 16) | (3 << 8)
    /* SPI_CTRLR0: XIP instruction 03h (bit 24), 8-bit instruction (INST_L 2, bit 8), 24-bit address
     * (ADDR_L 6, bit 2), instruction and address both in standard SPI (TRANS_TYPE 0). */
    .equ SPI_CTRLR0_XIP, (0x03 << 24) | (2 << 8) | (6 << 2) | 0

    .section .text.qg_boot2, "ax"
    .global qg_boot2
    .type qg_boot2, %function
    .thumb_func
qg_boot2:
    push {lr}
    ldr r3, =SSI_BASE
    movs r1, #0
    str r1, [r3, #SSI_SSIENR]       /* disable the SSI while it is configured */
    movs r1, #CLOCK_DIVIDER
    str r1, [r3, #SSI_BAUDR]
    ldr r1, =CTRLR0_XIP
    str r1, [r3, #SSI_CTRLR0]
    ldr r1, =SPI_CTRLR0_XIP
    ldr r0, =(SSI_BASE + SSI_SPI_CTRLR0)  /* beyond str's immediate offset range */
    str r1, [r0]
    movs r1, #0
    str r1, [r3, #SSI_CTRLR1]       /* NDF 0: one 32-bit frame per read */
    movs r1, #1
    str r1, [r3, #SSI_SSIENR]       /* enable: reads of 0x10xxxxxx now fetch from the flash */
    /* lr is 0 when the boot ROM entered us: go on into the image. Called as a function (lr != 0): return. */
    pop {r0}
    cmp r0, #0
    beq enter_image
    bx r0
enter_image:
    ldr r0, =(XIP_BASE + 0x100)     /* the vector table follows these 256 bytes */
    ldr r1, =VTOR
    str r0, [r1]
    ldmia r0, {r0, r1}              /* initial stack pointer, reset handler */
    msr msp, r0
    bx r1
    .ltorg
