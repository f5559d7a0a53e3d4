/* Counts forever; every 1000 increments appends the counter to argv[1] (O_APPEND).
 * After a checkpoint/restore the file must hold consecutive multiples of 1000: no gap (lost
 * state) and no repeat (restarted or duplicated writes). */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile unsigned long counter;

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0) return 3;
    for (;;) {
        counter++;
        if (counter % 1000 == 0) {
            char buf[32];
            int n = snprintf(buf, sizeof buf, "%lu\n", counter);
            if (write(fd, buf, n) != n) return 4;
        }
        if (counter % 100 == 0) usleep(1000);
    }
}
