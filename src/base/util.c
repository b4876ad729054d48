/*
 * util.c — f16 conversion and small file helpers.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

float skv_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    union { uint32_t u; float f; } v;
    if (exp == 0) {
        if (mant == 0) {
            v.u = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do { e++; mant <<= 1; } while (!(mant & 0x400u));
            mant &= 0x3ffu;
            v.u = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        v.u = sign | 0x7f800000u | (mant << 13);
    } else {
        v.u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    return v.f;
}

uint16_t skv_f32_to_f16(float f) {
    union { uint32_t u; float f; } v = {.f = f};
    uint32_t sign = (v.u >> 16) & 0x8000u;
    int32_t exp = (int32_t)((v.u >> 23) & 0xff) - 127 + 15;
    uint32_t mant = v.u & 0x7fffffu;
    if (((v.u >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00u);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
    return (uint16_t)h;
}

skv_status skv_read_file(const char *path, char **data, size_t *len) {
    *data = NULL;
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return skv_set_error(SKV_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return skv_set_error(SKV_ERR_IO, "%s: cannot seek", path);
    }
    long n = ftell(f);
    if (n < 0) {
        fclose(f);
        return skv_set_error(SKV_ERR_IO, "%s: cannot read (is it a directory?)", path);
    }
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    if (!buf) {
        fclose(f);
        return skv_set_error(SKV_ERR_NOMEM, "%s: cannot allocate %ld bytes", path, n);
    }
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) {
        free(buf);
        return skv_set_error(SKV_ERR_IO, "%s: short read", path);
    }
    buf[n] = 0;
    *data = buf;
    if (len) *len = (size_t)n;
    return SKV_OK;
}

const char *skv_path_join(char *buf, size_t cap, const char *dir, const char *name) {
    size_t dl = strlen(dir);
    if (dl > 0 && dir[dl - 1] == '/')
        snprintf(buf, cap, "%s%s", dir, name);
    else
        snprintf(buf, cap, "%s/%s", dir, name);
    return buf;
}

skv_status skv_map_file(const char *path, size_t min_size, const char *what, int writable, void **map,
                        size_t *size) {
    *map = NULL, *size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return skv_set_error(SKV_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return skv_set_error(SKV_ERR_IO, "%s: not a regular file", path);
    }
    const size_t n = (size_t)sb.st_size;
    if (n < min_size) {
        close(fd);
        return skv_set_error(SKV_ERR_FORMAT, "%s: %zu bytes, too short for %s", path, n, what);
    }
    void *m = mmap(NULL, n, PROT_READ | (writable ? PROT_WRITE : 0), MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return skv_set_error(SKV_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
    *map = m, *size = n;
    return SKV_OK;
}

void *skv_copy_to_hugepages(const void *src, size_t size, int writable, size_t *map_size) {
    const size_t huge = (size_t)2 << 20, al = (size + huge - 1) & ~(huge - 1);
    void *mem = mmap(NULL, al, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return NULL;
    madvise(mem, al, MADV_HUGEPAGE);
    memcpy(mem, src, size);
    if (!writable) mprotect(mem, al, PROT_READ);
    *map_size = al;
    return mem;
}
