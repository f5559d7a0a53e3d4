/* Helpers for the memory-kind test programs: what /proc/self/smaps says of the mapping that
 * holds an address, and a way to try an access that may fault. */
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>

struct vma_info {
    unsigned long start, end;
    char flags[512]; /* VmFlags, space separated, with a space at both ends */
    int pkey;
    long locked_kb, rss_kb, anon_huge_kb;
};

/* The smaps entry of the mapping holding `addr`; 0 if none. */
static int vma_of(const void *addr, struct vma_info *out) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return 0;
    char line[512];
    int found = 0;
    unsigned long a = (unsigned long)addr;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        char dash;
        if (sscanf(line, "%lx%c%lx ", &s, &dash, &e) == 3 && dash == '-' && strchr(line, ' ')) {
            if (found) break;
            if (a >= s && a < e) {
                found = 1;
                memset(out, 0, sizeof *out);
                out->start = s;
                out->end = e;
            }
            continue;
        }
        if (!found) continue;
        if (!strncmp(line, "VmFlags:", 8)) {
            snprintf(out->flags, sizeof out->flags, "%s", line + 8);
            char *nl = strchr(out->flags, '\n');
            if (nl) *nl = ' ';
        } else if (!strncmp(line, "ProtectionKey:", 14)) {
            out->pkey = atoi(line + 14);
        } else if (!strncmp(line, "Locked:", 7)) {
            out->locked_kb = atol(line + 7);
        } else if (!strncmp(line, "Rss:", 4)) {
            out->rss_kb = atol(line + 4);
        } else if (!strncmp(line, "AnonHugePages:", 14)) {
            out->anon_huge_kb = atol(line + 14);
        }
    }
    fclose(f);
    return found;
}

__attribute__((unused)) static int has_flag(const struct vma_info *v, const char *mn) {
    char pat[8];
    snprintf(pat, sizeof pat, " %s ", mn);
    return strstr(v->flags, pat) != NULL;
}

/* The flags among `interesting` that the mapping holding addr has, space separated. */
static const char *interesting = "dc wf hg nh dd mg lo lf sr rr nr sl gd";
__attribute__((unused)) static void flags_among(const void *addr, char *out, size_t n) {
    struct vma_info v;
    out[0] = 0;
    if (!vma_of(addr, &v)) {
        snprintf(out, n, "(unmapped)");
        return;
    }
    char list[64];
    snprintf(list, sizeof list, "%s", interesting);
    for (char *t = strtok(list, " "); t; t = strtok(NULL, " "))
        if (has_flag(&v, t)) {
            if (out[0]) strncat(out, " ", n - strlen(out) - 1);
            strncat(out, t, n - strlen(out) - 1);
        }
}

static sigjmp_buf zt_jmp;
static volatile int zt_code;
static void zt_segv(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    zt_code = si->si_code;
    siglongjmp(zt_jmp, 1);
}

/* Reads (write = 0) or writes one byte at p: 0 if it worked, else the SIGSEGV si_code. */
__attribute__((unused)) static int try_access(volatile unsigned char *p, int write) {
    struct sigaction sa = {0}, old;
    sa.sa_sigaction = zt_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, &old);
    int r = 0;
    if (sigsetjmp(zt_jmp, 1) == 0) {
        if (write)
            *p = 1;
        else
            (void)*p;
    } else {
        r = zt_code ? zt_code : -1;
    }
    sigaction(SIGSEGV, &old, NULL);
    return r;
}
