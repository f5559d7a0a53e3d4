/* A vfork child that has not called exec yet: it runs in its parent's address space, which a
 * checkpoint must refuse rather than save twice. */
#include "zaptest.h"

int main(int argc, char **argv) {
    zt_init(argc, argv);
    say("ready");
    if (vfork() == 0) {
        for (;;) pause();
    }
    return 0;
}
