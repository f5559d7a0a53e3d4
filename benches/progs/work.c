/* A fixed amount of work, timed by the program itself: argv[1] = "cpu" (xorshift and multiply
 * loop, no syscalls), "sys" (getppid and a 1-byte write to /dev/null, in a loop) or "clock"
 * (20 M reads of CLOCK_MONOTONIC through the vDSO, which in a time namespace adds the
 * namespace's offset). Writes the elapsed nanoseconds to the file argv[2]. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static uint64_t now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    uint64_t t0 = now(), x = 88172645463325252ull, acc = 0;
    if (strcmp(argv[1], "cpu") == 0) {
        for (uint64_t i = 0; i < 600000000ull; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            acc += x * 2654435761u;
        }
    } else if (strcmp(argv[1], "clock") == 0) {
        for (int i = 0; i < 20000000; i++)
            acc += now();
    } else {
        int fd = open("/dev/null", O_WRONLY);
        for (int i = 0; i < 1500000; i++) {
            acc += (uint64_t)syscall(SYS_getppid);
            acc += (uint64_t)write(fd, "x", 1);
        }
    }
    uint64_t dt = now() - t0;
    FILE *f = fopen(argv[2], "w");
    if (!f) return 3;
    fprintf(f, "%llu %llu\n", (unsigned long long)dt, (unsigned long long)(acc & 1));
    fclose(f);
    return 0;
}
