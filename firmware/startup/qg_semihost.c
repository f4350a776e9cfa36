/* Arm semihosting calls used by the qgen harness; see qg_semihost.h. */
#include "qg_semihost.h"

#include <stdint.h>
#include <string.h>

enum {
    SYS_OPEN = 0x01,
    SYS_CLOSE = 0x02,
    SYS_WRITE0 = 0x04,
    SYS_WRITE = 0x05,
    SYS_READ = 0x06,
    SYS_FLEN = 0x0C,
    SYS_EXIT_EXTENDED = 0x20
};

/* ADP_Stopped_ApplicationExit: "the program finished"; the second word is its exit status.
 * Plain SYS_EXIT on 32-bit Arm carries no status, so QEMU would always exit with 1. */
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u

static int semihost_call(int operation, const void *argument)
{
    register int r0 __asm__("r0") = operation;
    register const void *r1 __asm__("r1") = argument;
    /* The host reads and writes memory through r1, hence the "memory" clobber. */
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static uint32_t word(const volatile void *pointer)
{
    return (uint32_t)(uintptr_t)pointer;
}

void qg_semihost_puts(const char *text)
{
    (void)semihost_call(SYS_WRITE0, text);
}

int qg_semihost_open(const char *path, int mode)
{
    const uint32_t block[3] = {word(path), (uint32_t)mode, (uint32_t)strlen(path)};
    return semihost_call(SYS_OPEN, block);
}

int qg_semihost_close(int handle)
{
    const uint32_t block[1] = {(uint32_t)handle};
    return semihost_call(SYS_CLOSE, block);
}

long qg_semihost_flen(int handle)
{
    const uint32_t block[1] = {(uint32_t)handle};
    return (long)semihost_call(SYS_FLEN, block);
}

int qg_semihost_read_all(int handle, void *buf, size_t len)
{
    const uint32_t block[3] = {(uint32_t)handle, word(buf), (uint32_t)len};
    return semihost_call(SYS_READ, block); /* number of bytes NOT read */
}

int qg_semihost_write_all(int handle, const void *buf, size_t len)
{
    const uint32_t block[3] = {(uint32_t)handle, word(buf), (uint32_t)len};
    return semihost_call(SYS_WRITE, block); /* number of bytes NOT written */
}

void qg_semihost_exit(int code)
{
    const uint32_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)code};
    (void)semihost_call(SYS_EXIT_EXTENDED, block);
    for (;;) {
        /* Not reached under QEMU; on a probe without semihosting, park the core. */
    }
}
