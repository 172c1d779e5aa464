/* cgroup-v1-view — exec `<this program's path>.real` with the same arguments, and on a hybrid cgroup host
 * (cgroup v1 controllers under /sys/fs/cgroup plus a cgroup2 mount at /sys/fs/cgroup/unified) first in a
 * private mount namespace without that cgroup2 mount.
 * Why: crun >= 1.9 refuses hybrid hosts ("cgroups in hybrid mode not supported, drop all controllers from
 * cgroupv2") when the v2 hierarchy holds a controller (hugetlb here); without the unified mount it sees a
 * plain cgroup v1 host and works. The mount namespace is crun's own (each `crun create/start/kill/delete`
 * gets a fresh one); nothing on the host changes. A C program, not a shell script, so that the runtime
 * being measured pays one exec, not a shell's start.  Build: gcc -static -O2 -s -o crun cgroup-v1-view.c */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

int main(int argc, char **argv) {
  (void)argc;
  static char self[4096], real[4110];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) { perror("cgroup-v1-view: /proc/self/exe"); return 127; }
  self[n] = 0;
  snprintf(real, sizeof real, "%s.real", self);
  struct statfs fs;
  if (statfs("/sys/fs/cgroup/unified", &fs) == 0 && (unsigned long)fs.f_type == CGROUP2_SUPER_MAGIC &&
      unshare(CLONE_NEWNS) == 0) {
    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    umount2("/sys/fs/cgroup/unified", MNT_DETACH);
  }
  argv[0] = real;
  execv(real, argv);
  fprintf(stderr, "cgroup-v1-view: cannot exec %s: ", real);
  perror(NULL);
  return 127;
}
