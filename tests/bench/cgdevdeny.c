/*
 * cgdevdeny: the bench's cgroup v2 failure model.
 *
 * On a cgroup v2 host, a systemd daemon-reload attaches a second
 * BPF_PROG_TYPE_CGROUP_DEVICE program (built from the scope's DeviceAllow=,
 * which lacks the NVIDIA nodes) beside runc's own; the kernel needs every
 * attached program to allow an open, so open(/dev/nvidia*) fails with EPERM.
 * This tool does the same to one cgroup2 directory, with raw bpf(2) calls:
 *
 *   cgdevdeny attach DIR   load a program denying char major 195 and attach it
 *                          to DIR with BPF_F_ALLOW_MULTI (beside any others)
 *   cgdevdeny detach DIR   detach every program of ours from DIR (only ours:
 *                          found by name), then print how many were detached
 *   cgdevdeny count DIR    print how many programs of ours DIR has attached
 *
 * The attachment holds the program: nothing needs to stay running, and the
 * kernel drops it with the cgroup (docker restart makes a new one).
 * Exit status: 0 done, 1 a system call failed (one line on stderr), 2 usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NVIDIA_MAJOR 195
#define PROG_NAME "gpuwd_deny195" /* < BPF_OBJ_NAME_LEN; how detach knows ours */
#define MAX_PROGS 64

static long sys_bpf(int cmd, union bpf_attr *attr)
{
    return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})

static int load_prog(void)
{
    /* ctx is struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; };
     * the low 16 bits of access_type are the device type. Returns 0 (deny) for
     * char devices of major 195, 1 (allow) for everything else. */
    struct bpf_insn insns[] = {
        INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_2, BPF_REG_1, 0, 0), /* r2 = access_type */
        INSN(BPF_ALU64 | BPF_AND | BPF_K, BPF_REG_2, 0, 0, 0xffff),  /* r2 &= 0xffff */
        INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_3, BPF_REG_1, 4, 0), /* r3 = major */
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1),       /* r0 = 1 */
        INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_2, 0, 2, BPF_DEVCG_DEV_CHAR),
        INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_3, 0, 1, NVIDIA_MAJOR),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0),       /* r0 = 0: deny */
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    static char log[4096];
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = sizeof(insns) / sizeof(insns[0]);
    attr.license = (uint64_t)(uintptr_t) "GPL";
    attr.log_buf = (uint64_t)(uintptr_t)log;
    attr.log_size = sizeof(log);
    attr.log_level = 1;
    memcpy(attr.prog_name, PROG_NAME, sizeof(PROG_NAME));
    int fd = (int)sys_bpf(BPF_PROG_LOAD, &attr);
    if (fd < 0)
        fprintf(stderr, "cgdevdeny: BPF_PROG_LOAD: %s: %s\n", strerror(errno), log);
    return fd;
}

/* Fills fds with descriptors of the programs named ours attached to cg; returns how many, or -1. */
static int our_progs(int cg, int *fds, int max)
{
    uint32_t ids[MAX_PROGS];
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.query.target_fd = (uint32_t)cg;
    attr.query.attach_type = BPF_CGROUP_DEVICE;
    attr.query.prog_ids = (uint64_t)(uintptr_t)ids;
    attr.query.prog_cnt = MAX_PROGS;
    if (sys_bpf(BPF_PROG_QUERY, &attr) < 0) {
        fprintf(stderr, "cgdevdeny: BPF_PROG_QUERY: %s\n", strerror(errno));
        return -1;
    }
    int n = 0;
    for (uint32_t i = 0; i < attr.query.prog_cnt && n < max; i++) {
        union bpf_attr get;
        memset(&get, 0, sizeof(get));
        get.prog_id = ids[i];
        int fd = (int)sys_bpf(BPF_PROG_GET_FD_BY_ID, &get);
        if (fd < 0)
            continue; /* gone meanwhile */
        struct bpf_prog_info info;
        memset(&info, 0, sizeof(info));
        union bpf_attr inf;
        memset(&inf, 0, sizeof(inf));
        inf.info.bpf_fd = (uint32_t)fd;
        inf.info.info_len = sizeof(info);
        inf.info.info = (uint64_t)(uintptr_t)&info;
        if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &inf) == 0 && strcmp(info.name, PROG_NAME) == 0)
            fds[n++] = fd;
        else
            close(fd);
    }
    return n;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: cgdevdeny attach|detach|count CGROUP2_DIR\n");
        return 2;
    }
    const char *cmd = argv[1];
    int cg = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cg < 0) {
        fprintf(stderr, "cgdevdeny: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    if (strcmp(cmd, "attach") == 0) {
        int prog = load_prog();
        if (prog < 0)
            return 1;
        union bpf_attr attr;
        memset(&attr, 0, sizeof(attr));
        attr.target_fd = (uint32_t)cg;
        attr.attach_bpf_fd = (uint32_t)prog;
        attr.attach_type = BPF_CGROUP_DEVICE;
        attr.attach_flags = BPF_F_ALLOW_MULTI;
        if (sys_bpf(BPF_PROG_ATTACH, &attr) < 0) {
            fprintf(stderr, "cgdevdeny: BPF_PROG_ATTACH %s: %s\n", argv[2], strerror(errno));
            return 1;
        }
        return 0;
    }
    if (strcmp(cmd, "detach") == 0 || strcmp(cmd, "count") == 0) {
        int fds[MAX_PROGS];
        int n = our_progs(cg, fds, MAX_PROGS);
        if (n < 0)
            return 1;
        int done = 0;
        for (int i = 0; i < n; i++) {
            if (cmd[0] == 'd') {
                union bpf_attr attr;
                memset(&attr, 0, sizeof(attr));
                attr.target_fd = (uint32_t)cg;
                attr.attach_bpf_fd = (uint32_t)fds[i];
                attr.attach_type = BPF_CGROUP_DEVICE;
                if (sys_bpf(BPF_PROG_DETACH, &attr) < 0) {
                    fprintf(stderr, "cgdevdeny: BPF_PROG_DETACH %s: %s\n", argv[2], strerror(errno));
                    return 1;
                }
            }
            done++;
            close(fds[i]);
        }
        printf("%d\n", done);
        return 0;
    }
    fprintf(stderr, "usage: cgdevdeny attach|detach|count CGROUP2_DIR\n");
    return 2;
}
