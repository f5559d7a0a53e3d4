/* Floating point and AVX state live in registers across the checkpoint: an endless loop keeps
 * running sums in xmm/ymm registers and checks them against integer arithmetic every step. */
#include "zaptest.h"
#include <immintrin.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    double x = 0.0;
    __m256d acc = _mm256_setzero_pd();
    const __m256d step = _mm256_set_pd(1.0, 2.0, 3.0, 4.0);
    say("ready");
    for (unsigned long i = 1;; i++) {
        x += 0.5;
        acc = _mm256_add_pd(acc, step);
        if (x != 0.5 * (double)i) { say("FAIL x87/sse %lu", i); return 1; }
        double v[4];
        _mm256_storeu_pd(v, acc);
        if (v[0] != 4.0 * i || v[3] != 1.0 * i) { say("FAIL avx %lu", i); return 1; }
        if (i % 2000000 == 0) {
            struct stat st;
            say("step %lu", i);
            if (stat(argv[2], &st) == 0 && i % 4000000 == 0) { say("ok"); return 0; }
        }
    }
}
