/* Makes big mappings after the test's first checkpoint, touching little of them: when the file
 * argv[3] appears, starts 12 threads with 32 MiB stacks (each writes 16 KiB on its stack) and maps
 * 192 MiB (4 pages written), then says "ready". After the go file, checks what was written and
 * that untouched pages read zero, and says "ok" or "FAIL". Used to check that an incremental
 * checkpoint reads only the pages such new mappings hold. */
#include "zaptest.h"
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>

#define THREADS 12
#define STACK (32u << 20)
#define BIG (192u << 20)

static uint32_t *arrays[THREADS];
static volatile int started, done;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static uint32_t value(int t, int w) { return (uint32_t)(t + 1) * 2654435761u + (uint32_t)w; }

static void *thread(void *arg) {
    int t = (int)(intptr_t)arg;
    uint32_t local[4096];
    for (int w = 0; w < 4096; w++) local[w] = value(t, w);
    arrays[t] = local;
    pthread_mutex_lock(&lock);
    started++;
    pthread_mutex_unlock(&lock);
    while (!done) usleep(2000);
    return NULL;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    CHECK(argc > 3, "usage");
    say("started");
    wait_go(argv[3]);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, STACK);
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) CHECK(pthread_create(&th[t], &attr, thread, (void *)(intptr_t)t) == 0, "pthread_create %d", t);
    uint8_t *big = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(big != MAP_FAILED, "mmap");
    for (int p = 0; p < 4; p++) memset(big + (size_t)p * (BIG / 4), 0x41 + p, 4096);
    while (started < THREADS) usleep(1000);
    say("ready");
    wait_go(argv[2]);
    for (int t = 0; t < THREADS; t++) {
        for (int w = 0; w < 4096; w++) CHECK(arrays[t][w] == value(t, w), "thread %d word %d", t, w);
        /* 1 MiB below the array: never touched, must read zero. */
        const uint8_t *below = (const uint8_t *)arrays[t] - (1u << 20);
        for (int i = 0; i < 4096; i++) CHECK(below[i] == 0, "thread %d stack byte below", t);
    }
    for (int p = 0; p < 4; p++) {
        for (int i = 0; i < 4096; i++) CHECK(big[(size_t)p * (BIG / 4) + i] == 0x41 + p, "big page %d", p);
        for (int i = 0; i < 4096; i++) CHECK(big[(size_t)p * (BIG / 4) + 4096 + i] == 0, "big page %d + 1", p);
    }
    done = 1;
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    say("ok");
    return 0;
}
