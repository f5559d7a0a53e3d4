/* Protocol shared by the checkpoint/restore test programs:
 *   argv[1]  output file, opened O_APPEND (the fd itself is part of what is restored)
 *   argv[2]  "go" file: created by the test only after the restore
 * A program sets up its state, says "ready", waits for the go file, checks its state and says
 * "ok" or "FAIL <why>". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int zt_out = -1;

static void say(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    buf[n++] = '\n';
    if (write(zt_out, buf, n) != n) _exit(90);
}

static void zt_init(int argc, char **argv) {
    if (argc < 3) _exit(2);
    zt_out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (zt_out < 0) _exit(3);
}

static void wait_go(const char *path) {
    struct stat st;
    while (stat(path, &st) != 0) usleep(2000);
}

#define CHECK(cond, ...) do { if (!(cond)) { say("FAIL " __VA_ARGS__); _exit(1); } } while (0)
