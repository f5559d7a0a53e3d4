/* Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS) and a PROT_NONE guard region. */
#include "zaptest.h"
#include <sys/mman.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    unsigned char *s = mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    unsigned char *guard = mmap(0, 65536, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(s != MAP_FAILED && guard != MAP_FAILED, "mmap");
    for (int i = 0; i < (1 << 20); i += 512) s[i] = (unsigned char)(i >> 9);
    say("ready");
    wait_go(argv[2]);
    for (int i = 0; i < (1 << 20); i += 512) CHECK(s[i] == (unsigned char)(i >> 9), "shared byte %d", i);
    CHECK(mprotect(guard, 4096, PROT_READ) == 0 && guard[0] == 0, "guard region");
    say("ok");
    return 0;
}
