/* A static sandbox ("pause") process for the local cluster's containerd: sleeps as PID 1 of the
 * pod, reaps children, exits 0 on SIGTERM or SIGINT. Built by up.sh:
 *   gcc -Os -static -o pause pause.c && strip pause */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void on_term(int s) { (void)s; _exit(0); }
static void on_chld(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction a = {0}; a.sa_handler = on_term;
  sigaction(SIGINT, &a, NULL); sigaction(SIGTERM, &a, NULL);
  struct sigaction c = {0}; c.sa_handler = on_chld; c.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &c, NULL);
  for (;;) pause();
}
