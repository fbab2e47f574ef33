import { useCallback, useSyncExternalStore } from 'react';

// Dark mode: the `dark` class on <html>, remembered in localStorage as `ferry.theme`.

export const THEME_KEY = 'ferry.theme';
export type Theme = 'light' | 'dark';

const listeners = new Set<() => void>();

function current(): Theme {
  return document.documentElement.classList.contains('dark') ? 'dark' : 'light';
}

export function applyTheme(theme: Theme): void {
  document.documentElement.classList.toggle('dark', theme === 'dark');
  try {
    localStorage.setItem(THEME_KEY, theme);
  } catch {
    // Private mode: the choice lasts for this page only.
  }
  listeners.forEach((l) => l());
}

export function useTheme(): [Theme, () => void] {
  const theme = useSyncExternalStore(
    (l) => {
      listeners.add(l);
      return () => {
        listeners.delete(l);
      };
    },
    current,
    () => 'light' as Theme,
  );
  const toggle = useCallback(() => applyTheme(current() === 'dark' ? 'light' : 'dark'), []);
  return [theme, toggle];
}
