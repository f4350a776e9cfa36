/*
 * Arm semihosting for qgen's firmware harness: console text, host files and exit status.
 *
 * Under QEMU (-semihosting-config enable=on,target=native) a `bkpt 0xAB` with r0 = operation and
 * r1 = pointer to an argument block is serviced by the host. Host file paths are relative to the
 * directory QEMU was started in. On real hardware without a debugger attached `bkpt` faults, so
 * this file is for emulation and debug-probe runs only.
 */
#ifndef QG_SEMIHOST_H
#define QG_SEMIHOST_H

#include <stddef.h>

/* SYS_OPEN modes (index into ISO C fopen mode strings: "r", "rb", "r+", "r+b", "w", "wb", ...). */
enum {
    QG_SEMIHOST_MODE_RB = 1,
    QG_SEMIHOST_MODE_WB = 5
};

/* Write a NUL-terminated string to the host console (SYS_WRITE0). */
void qg_semihost_puts(const char *text);

/* Open a host file; returns a handle >= 0, or -1 on failure (SYS_OPEN). */
int qg_semihost_open(const char *path, int mode);

/* Close a handle from qg_semihost_open; returns 0 on success (SYS_CLOSE). */
int qg_semihost_close(int handle);

/* Length of an open host file in bytes, or -1 (SYS_FLEN). */
long qg_semihost_flen(int handle);

/* Read exactly `len` bytes; returns 0 on success, nonzero if the file ended early (SYS_READ). */
int qg_semihost_read_all(int handle, void *buf, size_t len);

/* Write exactly `len` bytes; returns 0 on success (SYS_WRITE). */
int qg_semihost_write_all(int handle, const void *buf, size_t len);

/* Stop the emulator with `code` as its exit status (SYS_EXIT_EXTENDED). */
__attribute__((noreturn)) void qg_semihost_exit(int code);

#endif /* QG_SEMIHOST_H */
