/* vforker: a parent waiting in vfork (state D) for a child stopped before its exec, as dash and
 * posix_spawn do in the instant between vfork and exec. The child stops itself, so the parent
 * stays in D until the child is continued; then the child execs `true`, and the parent prints
 * "child done" and exits. */
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    printf("vforking\n");
    fflush(stdout);
    pid_t pid = vfork();
    if (pid == 0) {
        kill(getpid(), SIGSTOP);
        execlp("true", "true", (char *)NULL);
        _exit(127);
    }
    if (pid < 0) {
        perror("vfork");
        return 1;
    }
    int status = 0;
    waitpid(pid, &status, 0);
    printf("child done %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fflush(stdout);
    pause();
    return 0;
}
