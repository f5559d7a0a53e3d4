/* argv[3]: a 64 KiB file mapped MAP_PRIVATE and modified in memory (the file must not change);
 * argv[4]: a 64 KiB file mapped MAP_SHARED and written through the mapping. */
#include "zaptest.h"
#include <sys/mman.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    int a = open(argv[3], O_RDONLY), b = open(argv[4], O_RDWR);
    CHECK(a >= 0 && b >= 0, "open");
    unsigned char *priv = mmap(0, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE, a, 0);
    unsigned char *shr = mmap(0, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
    CHECK(priv != MAP_FAILED && shr != MAP_FAILED, "mmap");
    close(a);
    close(b);
    for (int i = 0; i < 65536; i += 8192) priv[i] = 'P';          /* private copies of some pages */
    memcpy(shr + 100, "shared-before", 13);
    say("ready");
    wait_go(argv[2]);
    for (int i = 0; i < 65536; i++) {
        unsigned char want = (i % 8192 == 0) ? 'P' : (unsigned char)('a' + i % 26);
        CHECK(priv[i] == want, "private byte %d is %d", i, priv[i]);
    }
    CHECK(memcmp(shr + 100, "shared-before", 13) == 0, "shared content");
    memcpy(shr + 200, "shared-after", 12);
    CHECK(msync(shr, 65536, MS_SYNC) == 0, "msync");
    say("ok");
    return 0;
}
