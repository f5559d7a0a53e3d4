/* System V IPC in a pod: a private segment attached by a parent and its child (the child keeps
 * writing a counter into it), marked for removal while attached; a keyed segment nobody has
 * attached; a semaphore set with two values. argv[3]: a token written into the keyed segment. */
#include "zaptest.h"
#include <stdint.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <signal.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    int priv = shmget(IPC_PRIVATE, 1 << 20, IPC_CREAT | 0600);
    CHECK(priv >= 0, "shmget private");
    volatile uint64_t *shm = shmat(priv, NULL, 0);
    CHECK(shm != (void *)-1, "shmat");
    for (int i = 0; i < (1 << 17); i++) shm[i] = (uint64_t)i * 3;  /* the whole megabyte */
    CHECK(shmctl(priv, IPC_RMID, NULL) == 0, "mark for removal");
    int keyed = shmget(0x5a17, 8192, IPC_CREAT | 0640);
    CHECK(keyed >= 0, "shmget keyed");
    char *k = shmat(keyed, NULL, 0);
    strcpy(k, argv[3]);
    shmdt(k);
    int sem = semget(0x5a18, 2, IPC_CREAT | 0600);
    CHECK(sem >= 0, "semget");
    unsigned short vals[2] = {3, 7};
    CHECK(semctl(sem, 0, SETALL, vals) == 0, "setall");
    pid_t child = fork();
    if (child == 0) {
        for (uint64_t i = 1;; i++) {
            shm[0] = i;
            usleep(10000);
        }
    }
    while (shm[0] < 5) usleep(1000);
    say("ready");
    wait_go(argv[2]);
    uint64_t a = shm[0];
    usleep(100000);
    CHECK(shm[0] > a, "the child's writes reach the parent (%lu)", (unsigned long)shm[0]);
    for (int i = 1; i < (1 << 17); i++) CHECK(shm[i] == (uint64_t)i * 3, "segment word %d", i);
    int again = shmget(0x5a17, 0, 0);
    CHECK(again == keyed, "keyed segment has its id (%d, was %d)", again, keyed);
    k = shmat(keyed, NULL, SHM_RDONLY);
    CHECK(strcmp(k, argv[3]) == 0, "keyed segment contents: %s", k);
    struct shmid_ds ds;
    CHECK(shmctl(priv, IPC_STAT, &ds) == 0 && (ds.shm_perm.mode & SHM_DEST), "private segment still marked for removal");
    CHECK(semget(0x5a18, 0, 0) == sem, "semaphore set id");
    CHECK(semctl(sem, 0, GETVAL) == 3 && semctl(sem, 1, GETVAL) == 7, "semaphore values");
    struct sembuf op = {1, -7, IPC_NOWAIT};
    CHECK(semop(sem, &op, 1) == 0 && semctl(sem, 1, GETVAL) == 0, "semop");
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    say("ok");
    return 0;
}
