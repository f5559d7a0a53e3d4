/* An armed alarm(): not supported yet, so a checkpoint must refuse it (and leave us running). */
#include "zaptest.h"

int main(int argc, char **argv) {
    zt_init(argc, argv);
    alarm(1000);
    say("ready");
    for (;;) {
        say("tick");
        usleep(20000);
    }
}
