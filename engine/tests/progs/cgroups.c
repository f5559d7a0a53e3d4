/* Sub-cgroups a pod makes (as a service manager would), checked after a restore.
 * argv: out go. Runs as the pod's main process with the pod's cgroup namespace root on
 * /sys/fs/cgroup. Moves the pod's init and itself into init.scope, enables every controller the
 * pod's cgroup offers (for the root and svc), sets limits where the controllers exist
 * (memory.max and memory.high on svc/a, pids.max on svc/a, cpu.max and cpu.weight on svc/b) and
 * always the tree limits of svc; starts a child in svc/a, one in svc/b and one in fz (then
 * frozen), and a child with a second thread in the threaded cgroup thr/t1 (thr is then
 * "domain threaded"). After the restore every process and thread must be where it was, every
 * setting as it was, fz frozen (and thawable). */
#include "zaptest.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define CG "/sys/fs/cgroup"

static void must(int ok, const char *what) {
    if (!ok) {
        say("FAIL setup %s: %s", what, strerror(errno));
        _exit(1);
    }
}

static int put(const char *rel, const char *val) {
    char path[256];
    snprintf(path, sizeof path, CG "/%s", rel);
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, val, strlen(val));
    close(fd);
    return n == (ssize_t)strlen(val) ? 0 : -1;
}

static int get(const char *path, char *buf, size_t len) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = 0;
    while (n > 0 && buf[n - 1] == '\n') buf[--n] = 0;
    return 0;
}

static int getcg(const char *rel, char *buf, size_t len) {
    char path[256];
    snprintf(path, sizeof path, CG "/%s", rel);
    return get(path, buf, len);
}

/* The cgroup of task `pid` (or thread `tid` of it) as the pod sees it. */
static int cgroup_of(int pid, int tid, char *buf, size_t len) {
    char path[128], text[512];
    if (tid) snprintf(path, sizeof path, "/proc/%d/task/%d/cgroup", pid, tid);
    else snprintf(path, sizeof path, "/proc/%d/cgroup", pid);
    if (get(path, text, sizeof text) < 0) return -1;
    char *p = strstr(text, "0::");
    if (!p) return -1;
    snprintf(buf, len, "%s", p + 3);
    char *nl = strchr(buf, '\n');
    if (nl) *nl = 0;
    return 0;
}

static int has_ctrl(const char *list, const char *c) {
    char l[256];
    snprintf(l, sizeof l, " %s ", list);
    char w[32];
    snprintf(w, sizeof w, " %s ", c);
    return strstr(l, w) != NULL;
}

static void child_loop(void) {
    for (;;) pause();
}

static void on_usr1(int sig) {
    (void)sig;
    _exit(5);
}

static volatile int thread_tid;
static void *thread_main(void *arg) {
    (void)arg;
    thread_tid = syscall(SYS_gettid);
    char v[32];
    snprintf(v, sizeof v, "%d", thread_tid);
    if (put("thr/t1/cgroup.threads", v) < 0) thread_tid = -1;
    for (;;) pause();
    return NULL;
}

static int spawn_in(const char *cg) {
    int pid = fork();
    if (pid == 0) {
        signal(SIGUSR1, on_usr1);
        char procs[128], v[32];
        snprintf(procs, sizeof procs, "%s/cgroup.procs", cg);
        snprintf(v, sizeof v, "%d", getpid());
        if (put(procs, v) < 0) _exit(3);
        child_loop();
    }
    return pid;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    char buf[512], ctrls[256] = "";
    const char *dirs[] = {"init.scope", "svc", "svc/a", "svc/b", "fz", "thr", "thr/t1", NULL};
    for (int i = 0; dirs[i]; i++) {
        char path[128];
        snprintf(path, sizeof path, CG "/%s", dirs[i]);
        must(mkdir(path, 0755) == 0, dirs[i]);
    }
    must(put("init.scope/cgroup.procs", "1") == 0, "move init");
    char me[32];
    snprintf(me, sizeof me, "%d", getpid());
    must(put("init.scope/cgroup.procs", me) == 0, "move self");
    must(put("svc/cgroup.max.descendants", "7") == 0, "max.descendants");
    must(put("svc/cgroup.max.depth", "2") == 0, "max.depth");
    getcg("cgroup.controllers", ctrls, sizeof ctrls);
    /* Threaded subtree (before the root hands out domain controllers). */
    must(put("thr/t1/cgroup.type", "threaded") == 0, "threaded");
    char *save = NULL, copy[256];
    snprintf(copy, sizeof copy, "%s", ctrls);
    for (char *c = strtok_r(copy, " ", &save); c; c = strtok_r(NULL, " ", &save)) {
        char v[40];
        snprintf(v, sizeof v, "+%s", c);
        if (put("cgroup.subtree_control", v) < 0) continue; /* some may not apply here */
        put("svc/cgroup.subtree_control", v);
    }
    int mem = has_ctrl(ctrls, "memory"), pids = has_ctrl(ctrls, "pids"), cpu = has_ctrl(ctrls, "cpu");
    if (mem) {
        must(put("svc/a/memory.max", "67108864") == 0, "memory.max");
        must(put("svc/a/memory.high", "50331648") == 0, "memory.high");
    }
    if (pids) must(put("svc/a/pids.max", "50") == 0, "pids.max");
    if (cpu) {
        must(put("svc/b/cpu.max", "50000 100000") == 0, "cpu.max");
        must(put("svc/b/cpu.weight", "50") == 0, "cpu.weight");
    }
    char sc_root[256] = "", sc_svc[256] = "";
    getcg("cgroup.subtree_control", sc_root, sizeof sc_root);
    getcg("svc/cgroup.subtree_control", sc_svc, sizeof sc_svc);
    int a = spawn_in("svc/a"), b = spawn_in("svc/b"), f = spawn_in("fz");
    int t = fork();
    if (t == 0) {
        char v[32];
        snprintf(v, sizeof v, "%d", getpid());
        if (put("thr/cgroup.procs", v) < 0) _exit(3);
        pthread_t th;
        pthread_create(&th, NULL, thread_main, NULL);
        child_loop();
    }
    usleep(300000);
    must(put("fz/cgroup.freeze", "1") == 0, "freeze");
    for (int i = 0; i < 200; i++) {
        if (getcg("fz/cgroup.events", buf, sizeof buf) == 0 && strstr(buf, "frozen 1")) break;
        usleep(10000);
    }
    /* The thread of t: find it (the task that is not t). */
    int ttid = 0;
    char tdir[64];
    snprintf(tdir, sizeof tdir, "/proc/%d/task", t);
    for (int i = 0; i < 200 && !ttid; i++) {
        char path[128], cgp[128];
        for (int tid = t + 1; tid < t + 50; tid++) {
            snprintf(path, sizeof path, "%s/%d", tdir, tid);
            if (access(path, F_OK) == 0 && cgroup_of(t, tid, cgp, sizeof cgp) == 0 && strcmp(cgp, "/thr/t1") == 0) ttid = tid;
        }
        if (!ttid) usleep(10000);
    }
    must(ttid > 0, "thread in thr/t1");
    say("ready %s", ctrls);
    wait_go(argv[2]);

    char cgp[128];
    CHECK(cgroup_of(1, 0, cgp, sizeof cgp) == 0 && strcmp(cgp, "/init.scope") == 0, "init in %s", cgp);
    CHECK(cgroup_of(getpid(), 0, cgp, sizeof cgp) == 0 && strcmp(cgp, "/init.scope") == 0, "self in %s", cgp);
    CHECK(cgroup_of(a, 0, cgp, sizeof cgp) == 0 && strcmp(cgp, "/svc/a") == 0, "a in %s", cgp);
    CHECK(cgroup_of(b, 0, cgp, sizeof cgp) == 0 && strcmp(cgp, "/svc/b") == 0, "b in %s", cgp);
    CHECK(cgroup_of(f, 0, cgp, sizeof cgp) == 0 && strcmp(cgp, "/fz") == 0, "f in %s", cgp);
    CHECK(cgroup_of(t, 0, cgp, sizeof cgp) == 0 && strcmp(cgp, "/thr") == 0, "t in %s", cgp);
    CHECK(cgroup_of(t, ttid, cgp, sizeof cgp) == 0 && strcmp(cgp, "/thr/t1") == 0, "t's thread in %s", cgp);
    CHECK(getcg("thr/t1/cgroup.type", buf, sizeof buf) == 0 && strcmp(buf, "threaded") == 0, "t1 type %s", buf);
    CHECK(getcg("thr/cgroup.type", buf, sizeof buf) == 0 && strcmp(buf, "domain threaded") == 0, "thr type %s", buf);
    CHECK(getcg("svc/cgroup.max.descendants", buf, sizeof buf) == 0 && strcmp(buf, "7") == 0, "max.descendants %s", buf);
    CHECK(getcg("svc/cgroup.max.depth", buf, sizeof buf) == 0 && strcmp(buf, "2") == 0, "max.depth %s", buf);
    CHECK(getcg("cgroup.subtree_control", buf, sizeof buf) == 0 && strcmp(buf, sc_root) == 0, "root subtree_control %s, was %s", buf, sc_root);
    CHECK(getcg("svc/cgroup.subtree_control", buf, sizeof buf) == 0 && strcmp(buf, sc_svc) == 0, "svc subtree_control %s, was %s", buf, sc_svc);
    if (mem) {
        CHECK(getcg("svc/a/memory.max", buf, sizeof buf) == 0 && strcmp(buf, "67108864") == 0, "memory.max %s", buf);
        CHECK(getcg("svc/a/memory.high", buf, sizeof buf) == 0 && strcmp(buf, "50331648") == 0, "memory.high %s", buf);
    }
    if (pids) CHECK(getcg("svc/a/pids.max", buf, sizeof buf) == 0 && strcmp(buf, "50") == 0, "pids.max %s", buf);
    if (cpu) {
        CHECK(getcg("svc/b/cpu.max", buf, sizeof buf) == 0 && strcmp(buf, "50000 100000") == 0, "cpu.max %s", buf);
        CHECK(getcg("svc/b/cpu.weight", buf, sizeof buf) == 0 && strcmp(buf, "50") == 0, "cpu.weight %s", buf);
    }
    CHECK(getcg("fz/cgroup.freeze", buf, sizeof buf) == 0 && strcmp(buf, "1") == 0, "fz not frozen: %s", buf);
    int frozen = 0;
    for (int i = 0; i < 300 && !frozen; i++) {
        frozen = getcg("fz/cgroup.events", buf, sizeof buf) == 0 && strstr(buf, "frozen 1");
        if (!frozen) usleep(10000);
    }
    CHECK(frozen, "fz events: %s", buf);
    /* Frozen: a handled signal is not acted on until thawed. */
    kill(f, SIGUSR1);
    usleep(200000);
    int st;
    CHECK(waitpid(f, &st, WNOHANG) == 0, "frozen child ran");
    CHECK(put("fz/cgroup.freeze", "0") == 0, "thaw");
    CHECK(waitpid(f, &st, 0) == f && WIFEXITED(st) && WEXITSTATUS(st) == 5, "thawed child did not run its handler");
    kill(a, SIGKILL);
    kill(b, SIGKILL);
    kill(t, SIGKILL);
    waitpid(a, &st, 0);
    waitpid(b, &st, 0);
    waitpid(t, &st, 0);
    say("ok");
    return 0;
}
