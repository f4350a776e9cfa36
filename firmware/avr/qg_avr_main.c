/*
 * qgen's AVR test harness (simavr or a real ATmega): runs the model on inputs kept in flash and prints,
 * on USART0, per inference "O <output bytes in hex>" lines (32 bytes each), then "C <cycles in hex>"; at the end
 * "S <stack peak bytes in hex>" and "E". Cycles come from Timer1 at clk/1 with an overflow interrupt (the
 * interrupt's own cycles, about 30 per 65,536, are included). The stack peak is measured by painting the free
 * RAM between the heap start and the stack with a pattern before the runs. With QG_AVR_PER_LAYER (and the model's
 * trace hook compiled in) the first inference also prints "L <cycles at the end of layer i>" per layer.
 * With QG_AVR_BAUD (and F_CPU) defined, USART0 runs at that speed: on an Arduino it is the USB serial port.
 * qg_avr_config.h (written by codegen/target/avr.py) includes the model header and defines QG_AVR_RUN,
 * QG_AVR_INPUT_T, QG_AVR_INPUT_SIZE, QG_AVR_OUTPUT_SIZE and QG_AVR_N_INPUTS; qg_avr_inputs.c holds the inputs.
 */
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/pgmspace.h>
#include <stdint.h>

#include "qg_avr_config.h"

#define QG_AVR_PAINT 0xC5u

extern const QG_AVR_INPUT_T qg_avr_inputs[] PROGMEM;
extern char __heap_start;

static QG_AVR_INPUT_T qg_avr_in[QG_AVR_INPUT_SIZE];
static int8_t qg_avr_out[QG_AVR_OUTPUT_SIZE];
static volatile uint16_t qg_avr_overflows;

ISR(TIMER1_OVF_vect) { qg_avr_overflows++; }

/* Timer1 cycles since the start of the inference (interrupts off for the read: the ISR may not run between) */
static uint32_t cycles_now(void)
{
    const uint8_t sreg = SREG;
    uint16_t ticks, overflows;
    cli();
    ticks = TCNT1;
    overflows = qg_avr_overflows;
    if ((TIFR1 & (1u << TOV1)) && ticks < 0x8000u) { /* wrapped after cli(), ISR not yet run */
        overflows++;
    }
    SREG = sreg;
    return ((uint32_t)overflows << 16) + ticks;
}

#ifdef QG_AVR_PER_LAYER
/* per-layer counts (first inference): the model's trace hook marks the end of each layer */
static uint32_t qg_avr_layer_end[QG_AVR_NUM_LAYERS];
static uint8_t qg_avr_layers_on;

static void layer_done(int32_t layer, const int8_t *data, int32_t size)
{
    (void)data;
    (void)size;
    if (qg_avr_layers_on && layer >= 0 && layer < QG_AVR_NUM_LAYERS) {
        qg_avr_layer_end[layer] = cycles_now();
    }
}
#endif

static void put_char(char c)
{
    while (!(UCSR0A & (1u << UDRE0))) {
    }
    UDR0 = (uint8_t)c;
}

static void put_digit(uint8_t d)
{
    put_char((char)(d < 10u ? 48u + d : 87u + d)); /* '0' + d, 'a' + d - 10; no table: it would take SRAM */
}

static void put_hex(uint8_t b)
{
    put_digit((uint8_t)(b >> 4));
    put_digit((uint8_t)(b & 15u));
}

static void put_u32(char tag, uint32_t v)
{
    int8_t i;
    put_char(tag);
    put_char(' ');
    for (i = 3; i >= 0; i--) {
        put_hex((uint8_t)(v >> (8 * i)));
    }
    put_char('\n');
}

/* Fill the free RAM below the current stack pointer with the pattern (not inlined: its own frame is small). */
static void __attribute__((noinline)) paint_stack(void)
{
    uint8_t *p = (uint8_t *)&__heap_start;
    uint8_t *const end = (uint8_t *)SP - 32;
    while (p < end) {
        *p++ = QG_AVR_PAINT;
    }
}

static uint16_t stack_peak(void)
{
    const uint8_t *p = (const uint8_t *)&__heap_start;
    while (*p == QG_AVR_PAINT) {
        p++;
    }
    return (uint16_t)(RAMEND + 1 - (uint16_t)p);
}

int main(void)
{
    uint16_t n, i;
#ifdef QG_AVR_BAUD /* a real board (qgen firmware --image): the serial monitor's speed; simavr needs none */
    UCSR0A = (uint8_t)(1u << U2X0);
    UBRR0 = (uint16_t)((F_CPU / 8u + QG_AVR_BAUD / 2u) / QG_AVR_BAUD - 1u);
#endif
    UCSR0B = (uint8_t)(1u << TXEN0);
    paint_stack();
#ifdef QG_AVR_PER_LAYER
    QG_AVR_SET_TRACE(layer_done);
    qg_avr_layers_on = 1;
#endif
    for (n = 0; n < QG_AVR_N_INPUTS; n++) {
        uint32_t cycles;
        int status;
        memcpy_P(qg_avr_in, &qg_avr_inputs[(uint32_t)n * QG_AVR_INPUT_SIZE], sizeof qg_avr_in);
        qg_avr_overflows = 0;
        TCCR1A = 0;
        TCNT1 = 0;
        TIFR1 = (uint8_t)(1u << TOV1);
        TIMSK1 = (uint8_t)(1u << TOIE1);
        sei();
        TCCR1B = (uint8_t)(1u << CS10);
        status = QG_AVR_RUN(qg_avr_in, qg_avr_out);
        cycles = cycles_now();
        cli();
        TCCR1B = 0;
        if (status != 0) {
            put_u32('F', (uint32_t)status);
            break;
        }
        for (i = 0; i < QG_AVR_OUTPUT_SIZE; i++) { /* simavr splits lines longer than its buffer: 32 bytes a line */
            if (i % 32u == 0) {
                put_char('O');
                put_char(' ');
            }
            put_hex((uint8_t)qg_avr_out[i]);
            if (i % 32u == 31u || i + 1u == QG_AVR_OUTPUT_SIZE) {
                put_char('\n');
            }
        }
        put_u32('C', cycles);
#ifdef QG_AVR_PER_LAYER
        if (qg_avr_layers_on) {
            qg_avr_layers_on = 0;
            for (i = 0; i < QG_AVR_NUM_LAYERS; i++) { /* "L <cycles at the end of layer i>" */
                put_u32('L', qg_avr_layer_end[i]);
            }
        }
#endif
    }
    put_u32('S', stack_peak());
    put_char('E');
    put_char('\n');
    cli();
    for (;;) {
        __asm__ volatile("sleep"); /* simavr ends the run on sleep with interrupts off */
    }
    return 0;
}
